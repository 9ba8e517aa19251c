"""What steering buys and what it costs: ``sweep`` (behaviour, KL, perplexity, degenerate-repetition
rate and samples per coefficient, with a random same-norm control) and ``calibrate`` (the largest
coefficient within a KL / perplexity budget on neutral text, or, with ``target_shift``, the
smallest coefficient whose judged behaviour shift reaches the target, with the effect–cost curve).

Behaviour is judged by a judge (``steer.judges``): any callable ``texts -> scores``, e.g. the
external ``VaderJudge``; ``ProbeScore`` is a *probe judge* (it reads the model's activations along
a direction learnt from the steering data, so it sees the injection itself: an extra check only).

Cost is measured on neutral text (``steerlens.neutral.NEUTRAL_TEXTS`` by default) with steering
at every real position: KL(p_base ‖ p_steered) of the next-token distributions, averaged over the
positions that have a next token, and the perplexity of the text (``steerlens.neutral``: the same
forward and formulas as ``editing``'s perplexity and KL).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import torch

from steer.generation import generate
from steer.judges import VaderJudge, degenerate_rate, judge_texts
from steer.steering import Steering
from steer.inputs import Positions, Site
from steer.operators import Op
from steer.vector import SteeringVector
from steerlens.hooks import hook_kind
from steerlens.neutral import NEUTRAL_TEXTS, kl, next_token_logprobs, next_tokens, perplexity

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from steerlens.activations import Activations

#: neutral openings for generation, and the default prompts of ``calibrate(target_shift=...)``;
#: judge a calibrated vector on other prompts (``steer.judges.HELD_OUT_OPENINGS``)
NEUTRAL_OPENINGS: tuple[str, ...] = (
    "I went to the store and",
    "Today the weather",
    "Yesterday my neighbour",
    "The meeting this morning",
    "When I opened the door",
    "The new restaurant in town",
    "My trip to the city",
    "The book I am reading",
    "Last weekend we",
    "The film started and",
    "At the office today",
    "The train was",
)


@dataclass(frozen=True)
class LogitDiff:
    """Behaviour = mean logit of ``positive`` tokens − mean logit of ``negative`` tokens at the
    next-token position of each prompt (under steering; no generation). Tokens are strings
    (each must be one token, e.g. ``" happy"``) or ids."""

    positive: Sequence[str | int]
    negative: Sequence[str | int]
    name: str = "logit_diff"


@dataclass(frozen=True)
class ProbeScore:
    """A probe judge (it reads the direction that was injected: an extra check, not an external
    judge). Behaviour = ``probe.predict_proba(...)[:, 1]`` on the unsteered model's ``resid_post``
    activations at ``layer`` of each generated continuation, pooled as the probe was fitted.

    ``pool=None`` (default) takes the pooling recorded with the probe, ``probe.meta_["pool"]``
    (set by ``probes.sweep_layers`` and kept by ``save_probe``/``load_probe``); else the steered
    vector's ``info["pool"]`` (what ``steer.compute``/``actadd``/``mean_diff`` record), which
    assumes the probe was fitted on activations pooled like the vector's; else ``"mean"``, with a
    warning. A probe read with another pooling than it was fitted on scores other features.
    """

    probe: Any
    layer: int
    pool: Literal["last", "mean"] | None = None
    name: str = "probe judge"

    def __post_init__(self):
        if self.pool not in (None, "last", "mean"):
            raise ValueError(f"ProbeScore pool must be 'last', 'mean' or None (the probe's own), got {self.pool!r}")

    def resolve_pool(self, vector: SteeringVector | None = None) -> Literal["last", "mean"]:
        """The pooling to score with: ``pool``, else the probe's, else the vector's, else ``"mean"``."""
        if self.pool is not None:
            return self.pool
        for source, pool in (("probe.meta_['pool']", (getattr(self.probe, "meta_", None) or {}).get("pool")),
                             ("the vector's info['pool']", (vector.info or {}).get("pool") if vector is not None else None)):
            if pool is None:
                continue
            if pool not in ("last", "mean"):
                raise ValueError(f"ProbeScore: {source} is {pool!r}, but continuations are scored with 'last' "
                                 "or 'mean' pooling: pass pool= explicitly")
            return pool
        warnings.warn("ProbeScore: the probe records no pooling (probe.meta_['pool']) and neither does the "
                      "vector; scoring with pool='mean'. Pass pool= as the probe was fitted", stacklevel=3)
        return "mean"


Behaviour = Callable[[list[str]], Sequence[float]] | LogitDiff | ProbeScore | None
Metric = Literal["positive_share", "negative_share", "mean"]


@dataclass(frozen=True)
class Cost:
    kl: float  # mean KL(p_base ‖ p_steered) per position with a next token, nats
    ppl: float
    ppl_ratio: float  # ppl / unsteered ppl


@dataclass(frozen=True)
class SweepPoint:
    coeff: float
    behaviour: float | None
    kl: float
    ppl: float
    ppl_ratio: float
    samples: tuple[str, ...] = ()
    scores: tuple[float, ...] = ()
    positive_share: float | None = None  # judge score >= judge.threshold (judges with a threshold)
    negative_share: float | None = None  # judge score <= -judge.threshold
    degenerate: float | None = None  # steer.judges.degenerate_rate of the samples


@dataclass(frozen=True)
class SteeringSweep:
    points: tuple[SweepPoint, ...]
    control: tuple[SweepPoint, ...]
    baseline_ppl: float
    behaviour: str
    prompts: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def figure(self):
        from steer.plots import tradeoff_figure

        return tradeoff_figure(self)


# -- cost ---------------------------------------------------------------------------------------
class _Baseline:
    """Unsteered next-token log-probs on the neutral texts (``steerlens.neutral``), computed once
    per sweep/calibration; ``cost`` runs the same forward under steering."""

    def __init__(self, model, texts: Sequence[str], batch_size: int):
        self.model, self.texts, self.batch_size = model, list(texts), batch_size
        self.targets = next_tokens(model, self.texts)
        self.logp = next_token_logprobs(model, self.texts, batch_size=batch_size)
        self.ppl = perplexity(self.logp, self.targets)

    def cost(self, steering: Steering | None) -> Cost:
        if steering is None:
            return Cost(0.0, self.ppl, 1.0)
        with steering:
            logp = next_token_logprobs(self.model, self.texts, batch_size=self.batch_size)
        ppl = perplexity(logp, self.targets)
        return Cost(kl(self.logp, logp), ppl, ppl / self.ppl)


def steering_cost(model: "TransformerBridge", vector: SteeringVector, coeff: float, *,
                  texts: Sequence[str] = NEUTRAL_TEXTS, layers=None, op: Op = "add",
                  sites: Site | Sequence[Site] | None = None, batch_size: int = 8, force: bool = False) -> Cost:
    """KL and perplexity of neutral ``texts`` steered with ``coeff·vector`` at every position."""
    base = _Baseline(model, texts, batch_size)
    return base.cost(Steering(model, vector, coeff=coeff, layers=layers, op=op, sites=sites, force=force))


# -- sweep --------------------------------------------------------------------------------------
def sweep(model: "TransformerBridge", vector: SteeringVector, coeffs: Sequence[float],
          prompts: Sequence[str] = NEUTRAL_OPENINGS, *, behaviour: Behaviour = None,
          neutral: Sequence[str] = NEUTRAL_TEXTS, layers=None, op: Op = "add", positions: Positions = "all",
          sites: Site | Sequence[Site] | None = None, control: "bool | Activations" = True, max_new_tokens: int = 20,
          do_sample: bool = False, seed: int = 0, batch_size: int = 8, force: bool = False,
          progress: bool = True) -> SteeringSweep:
    """For each coefficient: behaviour score (mean over ``prompts``), KL and perplexity on
    ``neutral`` text, and the generations. ``control=True`` repeats it with a random vector of the
    same norm per layer (``vector.random_like(seed)``, isotropic); ``control=acts`` (an
    ``Activations``) with one shaped like those activations (``vector.random_like(seed, acts=acts)``)."""
    from tqdm.auto import tqdm

    coeffs = [float(c) for c in coeffs]
    if not coeffs:
        raise ValueError("coeffs is empty")
    if not all(math.isfinite(c) for c in coeffs):
        raise ValueError(f"coeffs must be finite, got {coeffs}")
    vector.check_compatible(model, force=force)
    prompts = list(prompts)
    if isinstance(behaviour, ProbeScore):  # settle the pooling once, before any work
        behaviour = replace(behaviour, pool=behaviour.resolve_pool(vector))
    base = _Baseline(model, neutral, batch_size)
    kw = dict(layers=layers, op=op, sites=sites, force=force)
    if not isinstance(control, bool) and not hasattr(control, "at"):
        raise TypeError(f"control must be True, False or an Activations, got {type(control).__name__}")
    shape = None if isinstance(control, bool) else control
    runs = [("vector", vector)] + ([("control", vector.random_like(seed, acts=shape))] if control is not False else [])
    out: dict[str, list[SweepPoint]] = {name: [] for name, _ in runs}
    bar = tqdm(total=len(coeffs) * len(runs), desc="sweep", unit="coeff", disable=not progress)
    for name, vec in runs:
        for c in coeffs:
            steering = Steering(model, vec, coeff=c, **kw) if c != 0 else None
            cost = base.cost(steering)
            texts = generate(model, prompts, vec if c != 0 else None, coeff=c, positions=positions,
                             max_new_tokens=max_new_tokens, do_sample=do_sample, seed=seed,
                             batch_size=batch_size, **kw)
            scores = _behaviour(model, behaviour, prompts, texts, vec, c, kw, batch_size)
            pos, neg = _shares(behaviour, scores)
            out[name].append(SweepPoint(
                coeff=c, behaviour=None if scores is None else float(sum(scores) / len(scores)),
                kl=cost.kl, ppl=cost.ppl, ppl_ratio=cost.ppl_ratio, samples=tuple(texts),
                scores=tuple(scores or ()), positive_share=pos, negative_share=neg,
                degenerate=degenerate_rate(texts)))
            bar.update()
    bar.close()
    meta = {"vector": {k: v for k, v in vector.metadata().items() if k != "info"}, "op": op,
            "positions": positions if isinstance(positions, str) else list(positions),
            "layers": layers if layers is not None else vector.layers, "max_new_tokens": max_new_tokens,
            "do_sample": do_sample, "seed": seed, "neutral_texts": list(neutral),
            "control": "none" if control is False else "isotropic" if shape is None else "activation-shaped"}
    if isinstance(behaviour, ProbeScore):
        meta["probe"] = {"layer": behaviour.layer, "pool": behaviour.pool}
    return SteeringSweep(tuple(out["vector"]), tuple(out.get("control", ())), base.ppl,
                       _behaviour_name(behaviour), tuple(prompts), meta)


def _shares(judge, scores) -> tuple[float | None, float | None]:
    t = getattr(judge, "threshold", None)
    if scores is None or t is None:
        return None, None
    return sum(s >= t for s in scores) / len(scores), sum(s <= -t for s in scores) / len(scores)


def _behaviour_name(b: Behaviour) -> str:
    if b is None:
        return "none"
    return getattr(b, "name", None) or getattr(b, "__name__", None) or type(b).__name__


def _behaviour(model, behaviour, prompts, texts, vec, c, kw, batch_size) -> list[float] | None:
    if behaviour is None:
        return None
    if isinstance(behaviour, LogitDiff):
        steering = Steering(model, vec, coeff=c, **kw) if c != 0 else None
        return logit_diff(model, prompts, behaviour, steering=steering, batch_size=batch_size)
    scored = [t if t.strip() else p + t for p, t in zip(prompts, texts)]
    if isinstance(behaviour, ProbeScore):
        from steerlens.capturing import capture

        acts = capture(model, scored, "resid_post", layers=[behaviour.layer], pool=behaviour.resolve_pool(),
                       batch_size=batch_size, progress=False)
        proba = behaviour.probe.predict_proba(acts.numpy(acts.hooks[0]))
        return [float(p) for p in proba[:, 1]]
    if callable(behaviour):
        scores = behaviour(list(scored))
        scores = [float(scores)] * len(texts) if isinstance(scores, (int, float)) else [float(s) for s in scores]
        if len(scores) != len(texts):
            raise ValueError(f"the behaviour function returned {len(scores)} scores for {len(texts)} texts")
        return scores
    raise TypeError(f"behaviour must be a callable, LogitDiff, ProbeScore or None, got {type(behaviour).__name__}")


def logit_diff(model: "TransformerBridge", prompts: Sequence[str], target: LogitDiff, *,
               steering: Steering | None = None, batch_size: int = 8) -> list[float]:
    """Per prompt: mean logit of ``target.positive`` − mean logit of ``target.negative`` at the
    next-token position (left-padded, so the last column is every prompt's last token)."""
    from steerlens.tokens import check_prompts, tokenize

    pos, neg = _token_ids(model, target.positive), _token_ids(model, target.negative)
    prompts = check_prompts(list(prompts))
    device = next(model.parameters()).device
    out: list[float] = []
    ctx = steering if steering is not None else _Null()
    with ctx, torch.inference_mode():
        for i in range(0, len(prompts), batch_size):
            ids, mask, _ = tokenize(model, prompts[i : i + batch_size], padding_side="left")
            logits = model(ids.to(device), attention_mask=mask.to(device), return_type="logits")[:, -1].float()
            out += (logits[:, pos].mean(-1) - logits[:, neg].mean(-1)).tolist()
    return out


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def _token_ids(model, tokens: Sequence[str | int]) -> list[int]:
    if isinstance(tokens, (str, int)):
        tokens = [tokens]
    ids = []
    for t in tokens:
        if isinstance(t, int):
            ids.append(t)
            continue
        enc = model.tokenizer(t, add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            raise ValueError(f"{t!r} is {len(enc)} tokens; LogitDiff needs single tokens")
        ids.append(enc[0])
    if not ids:
        raise ValueError("LogitDiff needs at least one positive and one negative token")
    return ids


# -- calibrate ----------------------------------------------------------------------------------
def _check_search(op: str, start: float, max_coeff: float) -> None:
    """The coefficient search's own arguments, for both calibration modes."""
    if op not in ("add", "add_norm"):
        raise ValueError(f"calibrate searches a coefficient for op 'add' or 'add_norm', got {op!r}")
    if not (math.isfinite(start) and start > 0 and math.isfinite(max_coeff) and max_coeff >= start):
        raise ValueError(f"need 0 < start <= max_coeff, got start={start}, max_coeff={max_coeff}")


def calibrate(model: "TransformerBridge", vector: SteeringVector, *, kl_budget: float | None = 0.1,
              ppl_budget: float | None = None, texts: Sequence[str] = NEUTRAL_TEXTS, layers=None,
              op: Literal["add", "add_norm"] = "add", sites: Site | Sequence[Site] | None = None,
              start: float = 0.25, max_coeff: float = 256.0, steps: int = 6, batch_size: int = 8,
              force: bool = False, target_shift: float | None = None, judge: Behaviour = None,
              metric: Metric = "positive_share", prompts: Sequence[str] = NEUTRAL_OPENINGS,
              max_new_tokens: int = 20, max_degenerate: float | None = None,
              progress: bool = False) -> SteeringVector:
    """Cost mode (default): the largest coefficient whose mean KL on neutral ``texts`` stays <=
    ``kl_budget`` nats (and/or whose perplexity ratio stays <= ``ppl_budget``), stored in the
    returned vector's ``coeff`` with the search details in ``info["calibration"]``.

    Doubles from ``start`` until the budget is exceeded (halves if ``start`` already exceeds
    it), then bisects in log space for ``steps`` steps. KL grows with the coefficient but is not
    guaranteed monotone, so the result is the largest coefficient *tried* within budget.

    Behaviour mode (``target_shift`` given): the smallest coefficient whose judged shift
    ``metric(steered) − metric(unsteered)`` on greedy continuations of ``prompts`` reaches
    ``target_shift``, within ``ppl_budget`` and ``max_degenerate`` when given (``kl_budget`` is
    not used). ``judge`` defaults to ``steer.judges.VaderJudge()``; ``metric`` is the judge's
    ``"positive_share"``, ``"negative_share"`` (a negative target lowers it) or ``"mean"`` score.
    Doubles from ``start`` until the target is reached (or the perplexity cap is broken; halves
    while ``start`` is over the cap), then
    bisects ``steps`` times in log space, towards the target (or, when it was not reached, towards
    the cap); the result is the smallest coefficient *tried* that reached it. ``info["calibration"]["tried"]`` is the
    effect–cost curve (shift, shares, KL, perplexity ratio, degenerate rate per coefficient);
    ``steer.plots.calibration_figure`` draws it with the chosen point marked. If no coefficient
    up to ``max_coeff`` reaches the target within the caps, a warning says so and the vector gets
    the coefficient with the largest shift within the caps, the largest such coefficient on a tie
    (``info["calibration"]["reached"]`` False).
    Judge the result on prompts other than ``prompts`` (``steer.judges.HELD_OUT_OPENINGS``).
    """
    if target_shift is not None:
        return _calibrate_behaviour(model, vector, target_shift=target_shift, judge=judge, metric=metric,
                                    prompts=prompts, max_new_tokens=max_new_tokens, ppl_budget=ppl_budget,
                                    max_degenerate=max_degenerate, texts=texts, layers=layers, op=op, sites=sites,
                                    start=start, max_coeff=max_coeff, steps=steps, batch_size=batch_size,
                                    force=force, progress=progress)
    if kl_budget is None and ppl_budget is None:
        raise ValueError("give kl_budget and/or ppl_budget")
    for name, b in (("kl_budget", kl_budget), ("ppl_budget", ppl_budget)):
        if b is not None and not (math.isfinite(b) and b > 0):
            raise ValueError(f"{name} must be a positive finite number, got {b}")
    if ppl_budget is not None and ppl_budget <= 1:
        raise ValueError(f"ppl_budget is a perplexity ratio and must be > 1, got {ppl_budget}")
    _check_search(op, start, max_coeff)
    vector.check_compatible(model, force=force)
    base = _Baseline(model, texts, batch_size)
    tried: list[dict[str, float]] = []

    def ok(c: float) -> bool:
        cost = base.cost(Steering(model, vector, coeff=c, layers=layers, op=op, sites=sites, force=force))
        good = (kl_budget is None or cost.kl <= kl_budget) and (ppl_budget is None or cost.ppl_ratio <= ppl_budget)
        tried.append({"coeff": c, "kl": cost.kl, "ppl_ratio": cost.ppl_ratio, "ok": good})
        return good

    lo, hi = None, None
    c = start
    if ok(c):
        lo = c
        while c < max_coeff:
            c = min(c * 2, max_coeff)
            if ok(c):
                lo = c
            else:
                hi = c
                break
    else:
        hi = c
        while c > start / 1024:
            c /= 2
            if ok(c):
                lo = c
                break
            hi = c
    if lo is None:
        raise ValueError(f"even coefficient {c:g} exceeds the budget: the vector is too strong for this model")
    if hi is None:
        warnings.warn(f"calibrate: max_coeff={max_coeff} is still within budget; returning it", stacklevel=2)
    else:
        for _ in range(steps):
            mid = math.sqrt(lo * hi)
            if ok(mid):
                lo = mid
            else:
                hi = mid
    best = max(t["coeff"] for t in tried if t["ok"])
    details = {"kl_budget": kl_budget, "ppl_budget": ppl_budget, "op": op, "n_texts": len(texts),
               "layers": vector.layers if layers is None else layers,
               "sites": [hook_kind(vector.hook)] if sites is None else [sites] if isinstance(sites, str) else list(sites),
               "baseline_ppl": base.ppl, "tried": sorted(tried, key=lambda t: t["coeff"]),
               **{k: v for k, v in next(t for t in tried if t["coeff"] == best).items() if k in ("kl", "ppl_ratio")}}
    return vector.with_coeff(best, calibration=details)


def _calibrate_behaviour(model, vector: SteeringVector, *, target_shift: float, judge: Behaviour, metric: Metric,
                         prompts: Sequence[str], max_new_tokens: int, ppl_budget: float | None,
                         max_degenerate: float | None, texts: Sequence[str], layers, op, sites, start: float,
                         max_coeff: float, steps: int, batch_size: int, force: bool, progress: bool) -> SteeringVector:
    from tqdm.auto import tqdm

    if not (isinstance(target_shift, (int, float)) and math.isfinite(target_shift) and target_shift != 0):
        raise ValueError(f"target_shift must be a non-zero finite number, got {target_shift!r}")
    if metric not in ("positive_share", "negative_share", "mean"):
        raise ValueError(f"metric must be 'positive_share', 'negative_share' or 'mean', got {metric!r}")
    judge = VaderJudge() if judge is None else judge
    if isinstance(judge, (LogitDiff, ProbeScore)) or not callable(judge):
        raise TypeError("calibrate(target_shift=...) needs a judge: a callable texts -> scores (e.g. "
                        f"steer.judges.VaderJudge()), got {type(judge).__name__}")
    if metric != "mean" and getattr(judge, "threshold", None) is None:
        raise ValueError(f"metric={metric!r} needs a judge with a threshold attribute; use metric='mean'")
    if ppl_budget is not None and not (math.isfinite(ppl_budget) and ppl_budget > 1):
        raise ValueError(f"ppl_budget is a perplexity ratio and must be > 1, got {ppl_budget}")
    if max_degenerate is not None and not 0 <= max_degenerate <= 1:
        raise ValueError(f"max_degenerate is a fraction in [0, 1], got {max_degenerate}")
    _check_search(op, start, max_coeff)
    vector.check_compatible(model, force=force)
    prompts = list(prompts)
    base = _Baseline(model, texts, batch_size)
    kw = dict(layers=layers, op=op, sites=sites, force=force)
    bar = tqdm(desc="calibrate", unit="coeff", disable=not progress)

    def judged(c: float) -> dict[str, Any]:
        outs = generate(model, prompts, vector if c else None, coeff=c if c else None, positions="all",
                        max_new_tokens=max_new_tokens, batch_size=batch_size, **kw)
        j = judge_texts(judge, [t if t.strip() else p + t for p, t in zip(prompts, outs)])
        cost = base.cost(Steering(model, vector, coeff=c, **kw) if c else None)
        bar.update()
        return {"coeff": c, "value": j.mean if metric == "mean" else getattr(j, metric), "mean": j.mean,
                "positive_share": j.positive_share, "negative_share": j.negative_share,
                "degenerate": degenerate_rate(outs), "kl": cost.kl, "ppl_ratio": cost.ppl_ratio}

    baseline = judged(0.0)
    tried: list[dict[str, Any]] = []

    def reached(c: float) -> bool:
        t = judged(c)
        t["shift"] = t["value"] - baseline["value"]
        t["within_caps"] = ((ppl_budget is None or t["ppl_ratio"] <= ppl_budget)
                            and (max_degenerate is None or t["degenerate"] <= max_degenerate))
        t["ok"] = t["within_caps"] and (t["shift"] >= target_shift if target_shift > 0 else t["shift"] <= target_shift)
        tried.append(t)
        return t["ok"]

    over = lambda t: ppl_budget is not None and t["ppl_ratio"] > ppl_budget  # noqa: E731
    # lo: largest tried within the caps that did not reach; hi: smallest that reached; top: smallest over the cap
    lo = hi = top = None

    def place(c: float) -> None:  # one trial, filed under hi, top or lo
        nonlocal lo, hi, top
        if reached(c):
            hi = c
        elif over(tried[-1]):  # stronger only costs more (the degenerate rate of a few prompts is too noisy to stop on)
            top = c
        else:
            lo = c

    c = start
    place(c)
    while hi is None and top is None and c < max_coeff:  # double until reached or over the cap
        c = min(c * 2, max_coeff)
        place(c)
    while top is not None and lo is None and hi is None and c > start / 1024:  # start was over the cap: halve
        c /= 2
        place(c)
    for _ in range(steps):  # bisect in log space: towards the target if reached, else towards the cap
        if hi is not None:
            place(math.sqrt((lo if lo is not None else hi / 2) * hi))
        elif top is not None and lo is not None:
            place(math.sqrt(lo * top))
        else:
            break
    bar.close()
    ok = [t for t in tried if t["ok"]]
    if ok:
        best = min(ok, key=lambda t: t["coeff"])
    else:
        within = [t for t in tried if t["within_caps"]] or tried
        best = max(within, key=lambda t: (t["shift"] * (1 if target_shift > 0 else -1), t["coeff"]))  # ties: the stronger
        warnings.warn(f"calibrate: no coefficient tried (up to {max(t['coeff'] for t in tried):g}) reached "
                      f"target_shift={target_shift} of {metric} within the caps; the best shift was "
                      f"{best['shift']:.3f} at coefficient {best['coeff']:g}", stacklevel=3)
    judge_name = getattr(judge, "name", None) or getattr(judge, "__name__", None) or type(judge).__name__
    details = {"mode": "behaviour", "coeff": best["coeff"], "target_shift": target_shift, "metric": metric, "judge": judge_name,
               "reached": bool(ok), "ppl_budget": ppl_budget, "max_degenerate": max_degenerate, "op": op,
               "prompts": prompts, "max_new_tokens": max_new_tokens, "n_texts": len(texts),
               "layers": vector.layers if layers is None else layers, "baseline_ppl": base.ppl,
               "baseline": baseline, "tried": sorted(tried, key=lambda t: t["coeff"]),
               **{k: best[k] for k in ("shift", "kl", "ppl_ratio", "degenerate", "positive_share", "negative_share")}}
    return vector.with_coeff(best["coeff"], calibration=details)
