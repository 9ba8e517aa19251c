"""Before/after evaluation of edits with ROME's CounterFact metrics (Meng et al. 2022, §3.2 and
appendix): efficacy, paraphrase and neighbourhood scores and magnitudes, generation fluency
(n-gram entropy), perplexity and KL on neutral text (``steerlens.neutral``, the same texts, forward
and formulas as steering's cost), and for erasure the true object's probability and rank."""

from __future__ import annotations

import math
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from editing import sites
from editing.prompts import encode_target, sample, score_targets
from editing.rome import Mode, Request, RomeConfig, check_context, edit
from steerlens.models import fingerprint, model_name
from steerlens.neutral import NEUTRAL_TEXTS, kl, next_token_logprobs, next_tokens, perplexity
from steerlens.tokens import encode

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

@dataclass(frozen=True)
class FactMetrics:
    """One request's CounterFact-style numbers on the current model. Probabilities of multi-token
    objects are length-normalised: exp(mean log-prob over the object's tokens)."""

    id: str
    efficacy: float  # 1 if P(new) > P(true) on the prompt
    efficacy_magnitude: float  # P(new) − P(true) on the prompt
    paraphrase: float  # fraction of paraphrases with P(new) > P(true)
    paraphrase_magnitude: float
    neighbourhood: float  # fraction of neighbourhood prompts with P(true) > P(new)
    neighbourhood_magnitude: float  # mean P(true) − P(new) there
    neighbourhood_top1: float  # fraction where the true object's first token is still top-1
    p_true: float  # first token of the true object on the prompt
    rank_true: int  # its rank (0 = top-1)
    paraphrase_p_true: tuple[float, ...]
    paraphrase_rank_true: tuple[int, ...]
    fluency: float | None = None  # n-gram entropy of sampled continuations of the prompt


@dataclass(frozen=True)
class Evaluation:
    """Per-fact metrics plus model-level perplexity/KL on neutral text; ``summary()`` averages."""

    facts: tuple[FactMetrics, ...]
    perplexity: float
    kl: float | None  # KL(reference ‖ this model) per neutral token, nats

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        keys = ["efficacy", "efficacy_magnitude", "paraphrase", "paraphrase_magnitude", "neighbourhood",
                "neighbourhood_magnitude", "neighbourhood_top1", "p_true"]
        for k in keys:
            out[k] = _mean([getattr(f, k) for f in self.facts])
        out["true_in_top10"] = _mean([float(f.rank_true < 10) for f in self.facts])
        out["paraphrase_true_in_top10"] = _mean([float(r < 10) for f in self.facts for r in f.paraphrase_rank_true])
        flu = [f.fluency for f in self.facts if f.fluency is not None]
        out["fluency"] = _mean(flu) if flu else float("nan")
        out["perplexity"] = self.perplexity
        out["kl"] = float("nan") if self.kl is None else self.kl
        return out


@dataclass
class EditReport:
    """``before`` (unedited) and ``after`` evaluations, plus what each edit computed."""

    mode: Mode
    stacked: bool
    layer: int
    before: Evaluation
    after: Evaluation
    edits: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "stacked": self.stacked, "layer": self.layer, "info": self.info,
            "summary": {"before": self.before.summary(), "after": self.after.summary()},
            "before": [asdict(f) for f in self.before.facts], "after": [asdict(f) for f in self.after.facts],
            "before_model": {"perplexity": self.before.perplexity},
            "after_model": {"perplexity": self.after.perplexity, "kl": self.after.kl},
            "edits": self.edits,
        }


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")


def n_gram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """ROME's generation entropy (``compute_n_gram_entropy``): the arithmetic mean of
    weight·H(n-gram frequencies) in bits, bigrams weighted 2/3 and trigrams 4/3, over word
    tokens. Repetitive (degenerate) text scores low."""
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    vals = []
    for n, w in zip(ns, weights):
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        h = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        vals.append(w * h)
    return float(sum(vals) / len(vals))


def check_lengths(model: "TransformerBridge", requests: Sequence[Request], *, fluency_tokens: int = 0,
                  neutral_texts: Sequence[str] = ()) -> None:
    """Raise ``ValueError`` naming the first prompt that, with its longest target (or the
    ``fluency_tokens`` sampled after it), does not fit the model's context."""
    for i, r in enumerate(requests):
        targets = {"target_true": r.target_true, **({"target_new": r.target_new} if r.target_new else {})}
        n_tgt = {name: len(encode_target(model, t, name)) for name, t in targets.items()}
        name = max(n_tgt, key=n_tgt.get)
        for kind, ps in (("prompt", [r.prompt]), ("paraphrases", list(r.paraphrases)), ("neighbourhood", list(r.neighbourhood))):
            for j, p in enumerate(ps):
                what = f"requests[{i}].{kind}" + ("" if kind == "prompt" else f"[{j}]")
                check_context(model, what, len(encode(model, p)), n_tgt[name], f"its {name}")
        if fluency_tokens > 0:
            check_context(model, f"requests[{i}].prompt", len(encode(model, r.prompt)), fluency_tokens, "fluency_tokens")
    for i, t in enumerate(neutral_texts):
        check_context(model, f"neutral_texts[{i}]", len(encode(model, t)))


def fact_metrics(model: "TransformerBridge", requests: Sequence[Request], *, fluency: dict[str, float] | None = None) -> list[FactMetrics]:
    """CounterFact metrics for each request on the model as it is now (one batched pass)."""
    prompts, targets, index = [], [], []
    for i, r in enumerate(requests):
        true_ids = encode_target(model, r.target_true, "target_true")
        new_ids = encode_target(model, r.target_new, "target_new") if r.target_new else None
        for kind, ps in (("prompt", [r.prompt]), ("para", list(r.paraphrases)), ("nb", list(r.neighbourhood))):
            for j, p in enumerate(ps):
                for which, ids in (("true", true_ids), ("new", new_ids)):
                    if ids is not None:
                        prompts.append(p)
                        targets.append(ids)
                        index.append((i, kind, j, which))
    sc = score_targets(model, prompts, targets)
    lp = sc.mean_logp()
    got: dict[tuple, tuple[float, float, int]] = {}
    for n, key in enumerate(index):
        got[key] = (math.exp(lp[n]), sc.p_first[n], sc.rank_first[n])
    out = []
    for i, r in enumerate(requests):
        def pair(kind, j):
            t = got[(i, kind, j, "true")]
            nw = got.get((i, kind, j, "new"))
            return t, nw

        t, nw = pair("prompt", 0)
        eff = float(nw[0] > t[0]) if nw else float("nan")
        eff_m = nw[0] - t[0] if nw else float("nan")
        para = [pair("para", j) for j in range(len(r.paraphrases))]
        nb = [pair("nb", j) for j in range(len(r.neighbourhood))]
        out.append(FactMetrics(
            id=str(getattr(r, "id", "") or i),
            efficacy=eff, efficacy_magnitude=eff_m,
            paraphrase=_mean([float(n[0] > a[0]) for a, n in para if n]) if para else float("nan"),
            paraphrase_magnitude=_mean([n[0] - a[0] for a, n in para if n]) if para else float("nan"),
            neighbourhood=_mean([float(a[0] > n[0]) for a, n in nb if n]) if nb else float("nan"),
            neighbourhood_magnitude=_mean([a[0] - n[0] for a, n in nb if n]) if nb else float("nan"),
            neighbourhood_top1=_mean([float(a[2] == 0) for a, _ in nb]) if nb else float("nan"),
            p_true=t[1], rank_true=t[2],
            paraphrase_p_true=tuple(a[1] for a, _ in para), paraphrase_rank_true=tuple(a[2] for a, _ in para),
            fluency=None if fluency is None else fluency.get(r.prompt),
        ))
    return out


def fluency(model, prompts: Sequence[str], *, samples: int, tokens: int, seed: int) -> dict[str, float]:
    """Mean ``n_gram_entropy`` of ``samples`` sampled (top-5, as ROME) continuations per prompt."""
    if tokens <= 0 or samples <= 0:
        return {}
    rep = [p for p in prompts for _ in range(samples)]
    texts = sample(model, rep, n=len(rep), max_new_tokens=tokens, seed=seed, top_k=5)
    out: dict[str, list[float]] = {}
    for p, t in zip(rep, texts):
        out.setdefault(p, []).append(n_gram_entropy(t))
    return {p: _mean(v) for p, v in out.items()}


def evaluate(
    model: "TransformerBridge",
    requests: Sequence[Request],
    *,
    reference: torch.Tensor | None = None,
    neutral_texts: Sequence[str] = NEUTRAL_TEXTS,
    fluency_samples: int = 2,
    fluency_tokens: int = 32,
    seed: int = 0,
) -> tuple[Evaluation, torch.Tensor]:
    """Evaluate ``requests`` on the model as it is; returns the ``Evaluation`` and the neutral
    log-probabilities (pass them as ``reference`` to get the KL of a later state)."""
    check_lengths(model, requests, fluency_tokens=fluency_tokens if fluency_samples > 0 else 0, neutral_texts=neutral_texts)
    flu = fluency(model, [r.prompt for r in requests], samples=fluency_samples, tokens=fluency_tokens, seed=seed)
    facts = fact_metrics(model, requests, fluency=flu or None)
    lp = next_token_logprobs(model, neutral_texts)
    ppl = perplexity(lp, next_tokens(model, neutral_texts))
    return Evaluation(tuple(facts), ppl, None if reference is None else kl(reference, lp)), lp


def evaluate_edits(
    model: "TransformerBridge",
    requests: Sequence[Request],
    *,
    mode: Mode = "rewrite",
    stacked: bool = False,
    layer: int | None = None,
    stats=None,
    corpus: str | os.PathLike | Sequence[str] | None = None,
    config: RomeConfig = RomeConfig(),
    fluency_samples: int = 2,
    fluency_tokens: int = 32,
    neutral_texts: Sequence[str] = NEUTRAL_TEXTS,
    progress: bool = True,
) -> EditReport:
    """Evaluate the unedited model, then apply each request (``stacked=False``: one at a time,
    each reverted before the next; ``stacked=True``: all together) and evaluate again, in one call.
    The model's weights are restored before returning (bit-exactly one at a time; within float
    rounding when stacked), including on errors."""
    from tqdm.auto import tqdm

    from editing.covariance import key_statistics

    requests = list(requests)
    if not requests:
        raise ValueError("requests is empty")
    layer = sites.default_layer(model) if layer is None else sites.check_layer(model, layer)
    check_lengths(model, requests, fluency_tokens=fluency_tokens if fluency_samples > 0 else 0, neutral_texts=neutral_texts)
    if stats is None:
        stats = key_statistics(model, layer, corpus=corpus, n_tokens=config.n_tokens, seed=config.seed, progress=progress)
    kw = dict(fluency_samples=fluency_samples, fluency_tokens=fluency_tokens, neutral_texts=neutral_texts, seed=config.seed)
    t0 = time.perf_counter()
    before, ref = evaluate(model, requests, **kw)
    edits, facts, ppls, kls = [], [], [], []
    handles = []
    try:
        for r in tqdm(requests, desc=f"{mode} + evaluate", disable=not progress):
            h = edit(model, r, layer=layer, mode=mode, stats=stats, config=config, progress=False)
            handles.append(h)
            res = h.result
            edits.append({"id": str(getattr(r, "id", "")), "subject": r.subject, "prompt": r.prompt,
                          "target_true": r.target_true, "target_new": r.target_new if mode == "rewrite" else None,
                          "steps": len(res.loss), "final_loss": res.loss[-1] if res.loss else None,
                          "delta_norm": float(res.delta.norm()), "seconds": res.seconds})
            if not stacked:
                ev, _ = evaluate(model, [r], reference=ref, **kw)
                facts += ev.facts
                ppls.append(ev.perplexity)
                kls.append(ev.kl)
                handles.pop().revert()
        if stacked:
            ev, _ = evaluate(model, requests, reference=ref, **kw)
            facts, ppls, kls = list(ev.facts), [ev.perplexity], [ev.kl]
    finally:
        for h in reversed(handles):
            h.revert()
    after = Evaluation(tuple(facts), _mean(ppls), _mean(kls))
    info = {"model": model_name(model), "fingerprint": fingerprint(model), "config": asdict(config),
            "covariance_tokens": stats.n, "seconds": time.perf_counter() - t0}
    return EditReport(mode=mode, stacked=stacked, layer=layer, before=before, after=after, edits=edits, info=info)
