"""ROME's prompts: target tokens, the subject's last token, context templates sampled from the
model, and teacher-forced scores of targets."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from steerlens.forward import final_hidden, logits_at
from steerlens.models import cache_dir, fingerprint
from steerlens.tokens import encode, pad, pad_id

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def encode_target(model: "TransformerBridge", target: str, name: str = "target") -> list[int]:
    """Token ids of a completion (no BOS). A target that tokenises to nothing is an error."""
    if not isinstance(target, str):
        raise TypeError(f"{name} must be a str, got {type(target).__name__}")
    ids = list(model.tokenizer(target, add_special_tokens=False)["input_ids"]) if target else []
    if not ids:
        raise ValueError(f"{name} {target!r} tokenises to nothing: pass a non-empty completion such as ' Paris'")
    return ids


def subject_last(model: "TransformerBridge", text: str, subject: str, after: int = 0) -> int:
    """Token index (BOS included) of the last token of the first occurrence of ``subject`` that
    starts at or after character ``after`` of ``text``."""
    from steerlens.tokens import token_span

    if not subject:
        raise ValueError("subject is empty")
    if text.find(subject, after) < 0:
        raise ValueError(f"subject {subject!r} does not occur in the prompt {text[after:]!r}")
    before = sum(1 for i in range(after) if text.startswith(subject, i))
    return token_span(model, text, subject, occurrence=before)[1] - 1


#: bump when ``sample`` draws differently, so nothing cached from older samples (prefixes, key
#: statistics of model-sampled text) is reused
SAMPLER_VERSION = 2


def sample(
    model: "TransformerBridge",
    prompts: Sequence[str] | None,
    *,
    n: int,
    max_new_tokens: int,
    seed: int,
    top_k: int | None = None,
    batch_size: int = 32,
) -> list[str]:
    """Sample continuations (decoded, prompt excluded) with the KV cache, from one generator
    seeded ``seed`` for the whole call. ``prompts=None`` samples ``n`` texts from BOS alone."""
    from steerlens.generation import generate_tokens

    gen = torch.Generator(device="cpu").manual_seed(seed)
    bos = model.tokenizer.bos_token or ""
    prompts = [bos] * n if prompts is None else list(prompts)
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        rows = [encode(model, p) if p != bos else [model.tokenizer.bos_token_id] for p in batch]
        ids, mask = pad(rows, pad_id(model), side="left")  # every row's next token in the last column
        toks = generate_tokens(model, ids, mask, max_new_tokens=max_new_tokens, do_sample=True, top_k=top_k,
                               generators=gen)
        out += [model.tokenizer.decode(t, skip_special_tokens=True) for t in toks]
    return out


_PREFIXES: dict[tuple, list[str]] = {}


def prefixes(model: "TransformerBridge", n: int, length: int, seed: int) -> list[str]:
    """ROME's context templates: ``n`` short texts (``length`` tokens) sampled from the model
    itself, seeded; memoised in the process and cached on disk (sampling is slow on CPU)."""
    if n == 0:
        return []
    key = (fingerprint(model), n, length, seed, SAMPLER_VERSION)
    if key in _PREFIXES:
        return _PREFIXES[key]
    path = cache_dir() / "editing" / "prefixes" / (hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16] + ".json")
    if path.is_file():
        texts = json.loads(path.read_text())
    else:
        from steerlens.io import write_json

        raw = sample(model, None, n=n, max_new_tokens=length, seed=seed, top_k=5)
        # ROME strips braces and ends each template with ". {}"
        texts = [" ".join(t.replace("{", " ").replace("}", " ").split()) for t in raw]
        write_json(path, texts)
    _PREFIXES[key] = texts
    return texts


def with_prefix(prefix: str, prompt: str) -> tuple[str, int]:
    """``"{prefix}. {prompt}"`` and the character where ``prompt`` starts."""
    if not prefix:
        return prompt, 0
    head = prefix + ". "
    return head + prompt, len(head)


@dataclass(frozen=True)
class Scored:
    """Log-probabilities of each (prompt, target) pair: ``logp`` per target token, the first
    token's probability and its rank (0 = top-1) among the whole vocabulary."""

    logp: list[list[float]]
    p_first: list[float]
    rank_first: list[int]

    def mean_logp(self) -> list[float]:
        """Length-normalised log-likelihood (ROME: mean NLL over target tokens, negated)."""
        return [sum(x) / len(x) for x in self.logp]


@torch.no_grad()
def score_targets(
    model: "TransformerBridge", prompts: Sequence[str], targets: Sequence[Sequence[int]], batch_size: int = 16
) -> Scored:
    """Teacher-forced log-probabilities of ``targets[i]`` after ``prompts[i]``."""
    logp, p_first, rank_first = [], [], []
    for s in range(0, len(prompts), batch_size):
        rows, spans = [], []
        for prompt, tgt in zip(prompts[s : s + batch_size], targets[s : s + batch_size]):
            ids = encode(model, prompt)
            rows.append(ids + list(tgt[:-1]))
            spans.append((len(ids) - 1, list(tgt)))
        ids, mask = pad(rows, pad_id(model))
        hidden = final_hidden(model, ids, mask)
        for i, (p0, tgt) in enumerate(spans):
            lg = logits_at(model, hidden[i, p0 : p0 + len(tgt)]).log_softmax(-1)
            t = torch.tensor(tgt, device=lg.device)
            lp = lg.gather(-1, t[:, None])[:, 0]
            logp.append(lp.tolist())
            p_first.append(float(lp[0].exp()))
            rank_first.append(int((lg[0] > lg[0, t[0]]).sum()))
    return Scored(logp, p_first, rank_first)
