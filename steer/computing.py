"""Compute steering vectors from contrastive activations (captured with ``steerlens.capture``).

Every function returns a ``SteeringVector`` with one direction per layer. Contrastive data is
either two ``Activations`` (positive, negative; row i of each is pair i) or one ``Activations``
whose ``labels`` mark the positives (``positive_label``), pairs then matched in order.
Scales are natural: a coefficient of 1 moves the average negative example to the average
positive one along the direction, so coefficients are comparable across methods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from steer.vector import SteeringVector

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from steerlens.activations import Activations

Method = Literal["mean_diff", "pca"]


def mean_diff(positive: "Activations", negative: "Activations | None" = None, *, layers: Sequence[int] | None = None,
              hook: str = "resid_post", positive_label: Any = 1) -> SteeringVector:
    """Difference of class means ``v = μ₊ − μ₋`` (CAA, Rimsky et al. 2024, arXiv:2312.06681; refusal
    direction, Arditi et al. 2024, arXiv:2406.11717)."""
    pos, neg, info = _split(positive, negative, layers, hook, positive_label)
    dirs = {layer: pos[layer].mean(0) - neg[layer].mean(0) for layer in pos}
    return _vector(dirs, "mean_diff", hook, info)


def pca(positive: "Activations", negative: "Activations | None" = None, *, layers: Sequence[int] | None = None,
        hook: str = "resid_post", positive_label: Any = 1, center: bool = False) -> SteeringVector:
    """First principal direction of the paired differences ``dᵢ = x₊ᵢ − x₋ᵢ`` (RepE, Zou et al. 2023,
    arXiv:2310.01405), signed so positives project higher, scaled by the mean projection ``mean(dᵢ·û)``.

    ``center=False`` takes the top right-singular vector of ``D`` (the RepE recipe with random pair
    order, where the differences have mean ~0); ``center=True`` centres ``D`` first (repeng's ``pca_diff``).
    """
    pos, neg, info = _split(positive, negative, layers, hook, positive_label)
    dirs = {}
    for layer in pos:
        if len(pos[layer]) != len(neg[layer]):
            raise ValueError(f"pca needs pairs: {len(pos[layer])} positives vs {len(neg[layer])} negatives")
        d = (pos[layer] - neg[layer]).double()
        x = d - d.mean(0) if center else d
        u = torch.linalg.svd(x, full_matrices=False).Vh[0]
        gap = float((d @ u).mean())
        if gap < 0:  # sign: positives project higher
            u, gap = -u, -gap
        dirs[layer] = (u * gap).float()
    return _vector(dirs, "pca", hook, info)


def from_probe(probe: Any | Mapping[int, Any], layer: int | None = None, *, positive: "Activations | None" = None,
               negative: "Activations | None" = None, hook: str = "resid_post", positive_label: Any = 1,
               model: "TransformerBridge | None" = None) -> SteeringVector:
    """A linear probe's unit ``direction`` (e.g. ``probes.LogisticProbe``; Alain & Bengio 2016,
    arXiv:1610.01644), per layer: pass ``probe`` with ``layer``, or ``{layer: probe}``.

    With ``positive`` (and ``negative``) activations the unit direction is scaled by the projected
    class-mean gap ``(μ₊ − μ₋)·û``; without them it stays unit norm. ``model`` fills in the
    model name and fingerprint.
    """
    probes = dict(probe) if isinstance(probe, Mapping) else {layer: probe}
    if None in probes:
        raise ValueError("from_probe needs layer= (or a {layer: probe} mapping)")
    dirs: dict[int, torch.Tensor] = {}
    for lay, p in probes.items():
        if not hasattr(p, "direction"):
            raise TypeError(f"the probe at layer {lay} ({type(p).__name__}) has no .direction: is it fitted?")
        d = torch.as_tensor(np.asarray(p.direction, dtype=np.float32)).reshape(-1)
        dirs[int(lay)] = d / d.norm().clamp_min(1e-12)
    info: dict[str, Any] = {}
    if positive is not None:
        pos, neg, info = _split(positive, negative, list(dirs), hook, positive_label)
        dirs = {lay: u * float((pos[lay].mean(0) - neg[lay].mean(0)) @ u) for lay, u in dirs.items()}
    if model is not None:
        info.update(_model_info(model))
    info["probe"] = sorted({type(p).__name__ for p in probes.values()})
    return _vector(dirs, "probe", hook, info)


def actadd(model: "TransformerBridge", positive: str, negative: str, layers: int | Sequence[int], *,
           pool: Literal["last", "mean"] = "last") -> SteeringVector:
    """One prompt pair's activation difference ``h(p₊) − h(p₋)`` (ActAdd, Turner et al. 2023,
    arXiv:2308.10248), pooled over each prompt (``last`` token or ``mean``), recorded in
    ``info["pool"]``.

    ``pool="last"`` by default: the prompts are short and the last token has read all of each,
    while ``"mean"`` averages in BOS (identical in both prompts, so it cancels) and shrinks the
    difference by the prompt length."""
    from steerlens.capturing import capture

    acts = capture(model, [positive, negative], "resid_post", layers=layers, pool=pool, labels=[1, 0], progress=False)
    vec = mean_diff(acts)
    return vec.replace(method="actadd", info={**vec.info, "pool": pool, "prompts": [positive, negative]})


def compute(model: "TransformerBridge", pairs: str | Sequence[Any], *, layers: int | Sequence[int] | None = None,
            method: Method = "mean_diff", pool: Literal["last", "mean"] = "mean", batch_size: int = 16,
            progress: bool = False) -> SteeringVector:
    """Capture contrastive pairs and compute a vector in one call.

    ``pairs``: a shipped dataset name (``"sentiment"``), records with ``.positive``/``.negative``
    (or such dict keys), or ``(positive, negative)`` string tuples.

    ``pool="mean"`` by default (recorded in ``info["pool"]``), unlike ``capture``'s ``"last"``:
    the pairs are whole sentences whose contrast sits in a word or two inside them (the last
    token of every shipped ``sentiment`` sentence is the same full stop), and the vector is added
    at every position of the text it steers, so the mean over positions is the direction to add.
    The steering acceptance figures (``benchmarks/README.md``) were measured with it.

    ``layers=None`` (default): every layer, the default recipe. Added at every layer, the class-mean
    differences reinforce each other along the residual stream while a random direction per layer
    does not, and no layer has to be chosen (repeng steers every layer too); on Gemma 3 270M it
    moved the external judge further at the same perplexity than any single layer (the recipe
    table in ``benchmarks/README.md``).
    """
    from steerlens.capturing import capture

    if method not in ("mean_diff", "pca"):
        raise ValueError(f"method must be 'mean_diff' or 'pca', got {method!r}")
    dataset = dataset_hash = None
    if isinstance(pairs, str):
        from steerlens import data

        dataset, dataset_hash = pairs, data.digest(pairs)
        pairs = data.load(pairs)
    pos_texts, neg_texts = _pair_texts(pairs)
    kw = dict(layers=layers, pool=pool, batch_size=batch_size, progress=progress)
    pos = capture(model, pos_texts, "resid_post", **kw)
    neg = capture(model, neg_texts, "resid_post", **kw)
    vec = (mean_diff if method == "mean_diff" else pca)(pos, neg)
    info = {**vec.info, "model_type": _model_info(model)["model_type"], "pool": pool, "n_pairs": len(pos_texts)}
    return vec.replace(dataset=dataset, dataset_hash=dataset_hash, info=info)


# -- helpers ----------------------------------------------------------------------------------
def _pair_texts(pairs: Sequence[Any]) -> tuple[list[str], list[str]]:
    pos, neg = [], []
    for i, p in enumerate(pairs):
        if isinstance(p, Mapping):
            a, b = p.get("positive"), p.get("negative")
        elif isinstance(p, (tuple, list)) and len(p) == 2:
            a, b = p
        else:
            a, b = getattr(p, "positive", None), getattr(p, "negative", None)
        if not isinstance(a, str) or not isinstance(b, str):
            raise TypeError(f"pairs[{i}] is not a (positive, negative) pair of strings: {p!r}")
        pos.append(a)
        neg.append(b)
    if not pos:
        raise ValueError("pairs is empty")
    return pos, neg


def _model_info(model: "TransformerBridge") -> dict[str, Any]:
    from steerlens.models import fingerprint, model_name

    cfg = getattr(model.original_model, "config", None)
    return {"model_name": model_name(model), "fingerprint": fingerprint(model),
            "model_type": getattr(cfg, "model_type", None)}


def _split(positive, negative, layers, hook, positive_label):
    """-> ``({layer: pos[n₊, d]}, {layer: neg[n₋, d]}, info)`` in float32."""
    if layers is None:
        layers = [layer for layer in positive.layers if _has(positive, layer, hook)]
    layers = [layers] if isinstance(layers, int) else list(layers)
    if not layers:
        raise ValueError(f"no {hook!r} activations to compute from; captured hooks: {positive.hooks}")
    for layer in layers:
        if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
            raise ValueError(f"layers must be non-negative block indices, got {layer!r}")
    pos: dict[int, torch.Tensor] = {}
    neg: dict[int, torch.Tensor] = {}
    if negative is None:
        labels = positive.labels
        is_pos = torch.as_tensor(labels == positive_label)
        if not is_pos.any() or is_pos.all():
            raise ValueError(f"labels must contain both positive_label={positive_label!r} and other "
                             f"values; got {sorted(set(labels.tolist()))[:5]}")
    for layer in layers:
        a = _tensor(positive, layer, hook)
        if negative is None:
            pos[layer], neg[layer] = a[is_pos], a[~is_pos]
        else:
            pos[layer], neg[layer] = a, _tensor(negative, layer, hook)
            if pos[layer].shape[1] != neg[layer].shape[1]:
                raise ValueError("positive and negative activations have different widths")
        if len(pos[layer]) == 0 or len(neg[layer]) == 0:
            raise ValueError("need at least one positive and one negative example")
    src = positive.info
    if negative is not None and negative.info.get("fingerprint") not in (None, src.get("fingerprint")):
        raise ValueError("positive and negative activations come from different models")
    info = {"model_name": src.get("model"), "fingerprint": src.get("fingerprint"),
            "pool": getattr(positive, "pool", None), "n_positive": len(next(iter(pos.values()))),
            "n_negative": len(next(iter(neg.values())))}
    return pos, neg, info


def _has(acts, layer: int, hook: str) -> bool:
    try:
        acts.at(layer, hook)
        return True
    except KeyError:
        return False


def _tensor(acts, layer: int, hook: str) -> torch.Tensor:
    try:
        x = acts.at(layer, hook)
    except KeyError:
        raise ValueError(f"no {hook!r} activations at layer {layer}; captured: {acts.hooks}") from None
    if getattr(acts, "pool", None) == "all":
        raise ValueError("capture with pool='last', 'mean' or positions: one row per prompt is needed")
    return x.float()


def _vector(dirs: dict[int, torch.Tensor], method: str, hook: str, info: dict[str, Any]) -> SteeringVector:
    info = dict(info)
    name, fp = info.pop("model_name", None), info.pop("fingerprint", None)
    return SteeringVector(dirs, hook=hook, method=method, model_name=name, fingerprint=fp,
                          info={k: v for k, v in info.items() if v is not None})
