"""Directional ablation at every residual write, baked into the weights or run through hooks
(Arditi et al. 2024, "Refusal in LMs is mediated by a single direction", arXiv:2406.11717, §4, eq. 5).

Bake: ``W ← W − r̂r̂ᵀW`` (and ``b ← b − r̂r̂ᵀb``) for every matrix that writes to the residual
stream: the token embedding, the positional embedding where there is one, each attention output
projection and each MLP down-projection. Run time: ``x ← x − r̂r̂ᵀx`` at the same writes.

Sandwich norms (Gemma 2/3): there the attention and MLP outputs pass through an RMSNorm *after*
their last linear map (``out = g ⊙ y / rms(y)``, ``g`` the norm's gain, ``1 + w`` in Gemma), so
projecting the written vector itself is not expressible in the weights. Projecting ``y`` off
``r̂' = unit(g ⊙ r̂)`` is: ``y ⟂ g ⊙ r̂`` gives ``out · r̂ = (g ⊙ y) · r̂ / rms(y) = 0``, so the write is
still exactly ⟂ r̂. That is what the bake does to ``o_proj``/``down_proj`` and what ``ablated()``
does at the post-norm's input, so the two agree; ``ablated(naive=True)`` projects ``r̂`` out of the
post-norm outputs instead (the textbook stream-level ablation), which differs on such models.

Every changed weight keeps ROME's bookkeeping (``editing.rome.set_weight``), so bakes and ROME
edits stack in any order and revert bit-exactly in reverse order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from jaxtyping import Float

from editing.rome import EditHandle, set_weight
from steer.operators import ablate
from steer.vector import SteeringVector
from steerlens.steps import exclusive, intervene

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["Orthogonalization", "ablated", "orthogonalize", "orthogonalized", "write_directions"]

#: a SteeringVector (one layer, or choose it with ``layer=``), a fitted probe (its ``.direction``),
#: or a tensor/array ``[d_model]``; it need not be unit length
Direction = Any
Layout = Literal["linear", "rows"]  # Linear: [d_model, d_in]; Conv1D / Embedding: [n, d_model]
#: attribute on the HF model while a bake keeps its tied unembedding apart: the number of live bakes
_UNTIED = "_steerlens_orth_untied"


@dataclass(frozen=True)
class _Write:
    """One write into the residual stream: the module whose weight (and bias) is projected, the
    hook where ``ablated()`` projects the same thing at run time, and the norm applied after it."""

    name: str  # e.g. "blocks.3.mlp.out"
    module: torch.nn.Module
    layout: Layout
    hook: str  # the exact run-time equivalent of the bake
    naive_hook: str  # the sub-layer's output in the stream (after a post-norm, if any)
    post_norm: torch.nn.Module | None = None


def _layout(module: torch.nn.Module, name: str) -> Layout:
    if isinstance(module, torch.nn.Embedding):
        return "rows"
    if isinstance(module, torch.nn.Linear):
        return "linear"
    if type(module).__name__ == "Conv1D":
        return "rows"
    raise TypeError(f"unsupported architecture: {name} is a {type(module).__name__}; weight orthogonalization "
                    "handles Embedding, Linear and Conv1D residual writes")


def _writes(model: "TransformerBridge") -> list[_Write]:
    """Every residual write of ``model``, read from its HF modules (sandwich norms detected by the
    presence of post-attention / post-MLP norms, ``blocks[L].ln1_post`` / ``ln2_post``)."""
    out = []
    embed = getattr(getattr(model, "embed", None), "original_component", None)
    if embed is None:
        raise TypeError("unsupported architecture: the model has no token embedding bridge (model.embed)")
    out.append(_Write("embed", embed, _layout(embed, "embed"), "hook_embed", "hook_embed"))
    pos = getattr(getattr(model, "pos_embed", None), "original_component", None)
    if isinstance(pos, torch.nn.Embedding) and pos.embedding_dim == int(model.cfg.d_model):
        out.append(_Write("pos_embed", pos, "rows", "hook_pos_embed", "hook_pos_embed"))
    for L, block in enumerate(model.blocks):
        for part, sub, post in (("attn", "o", "ln1_post"), ("mlp", "out", "ln2_post")):
            bridge = getattr(getattr(block, part, None), sub, None)
            module = getattr(bridge, "original_component", None)
            name = f"blocks.{L}.{part}.{sub}"
            if module is None:
                raise TypeError(f"unsupported architecture: block {L} has no {part}.{sub} projection "
                                f"(model.blocks[{L}].{part}.{sub}) to orthogonalize")
            norm = getattr(getattr(block, post, None), "original_component", None)
            naive = f"blocks.{L}.hook_{part}_out"
            hook = f"blocks.{L}.{post}.hook_in" if norm is not None else naive
            out.append(_Write(name, module, _layout(module, name), hook, naive, norm))
    n_post = sum(w.post_norm is not None for w in out)
    if n_post not in (0, 2 * len(model.blocks)):
        raise TypeError("unsupported architecture: only some attention/MLP outputs have a post-norm")
    return out


@torch.no_grad()
def _gain(norm: torch.nn.Module, where: str) -> Float[torch.Tensor, " d"]:
    """The elementwise gain ``g`` of an RMSNorm ``out = g ⊙ y / sqrt(mean(y²) + eps)``, read from the
    module (HF Gemma3RMSNorm: ``g = 1 + w``; Llama-style: ``g = w``) and checked against its output."""
    w = getattr(norm, "weight", None)
    eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", None))
    if not isinstance(w, torch.Tensor) or w.ndim != 1 or eps is None:
        raise TypeError(f"unsupported architecture: the post-norm {where} ({type(norm).__name__}) is not an "
                        "RMSNorm with an elementwise weight")
    x = torch.randn(4, w.numel(), generator=torch.Generator().manual_seed(0)).to(w.device)  # float32: HF norms upcast
    got = norm(x).float()
    base = x.float() / (x.float().pow(2).mean(-1, keepdim=True) + float(eps)).sqrt()
    for g in (1.0 + w.float(), w.float()):
        if torch.allclose(got, base * g, rtol=1e-3, atol=1e-5):
            return g
    raise TypeError(f"unsupported architecture: the post-norm {where} ({type(norm).__name__}) is neither "
                    "g ⊙ y / rms(y) with g = weight nor with g = 1 + weight")


def _unit(direction: Direction, model: "TransformerBridge", layer: int | None) -> Float[torch.Tensor, " d"]:
    """``direction`` as a unit float32 CPU vector ``[d_model]``, checked (errors name the parameter)."""
    if isinstance(direction, SteeringVector):
        direction.check_compatible(model)
        if layer is None:
            if len(direction) != 1:
                raise ValueError(f"direction: the SteeringVector has one direction per layer ({direction.layers}); "
                                 "pass layer=<one of them> to choose which one to project out")
            layer = direction.layers[0]
        elif layer not in direction.directions:
            raise ValueError(f"layer={layer!r}: the SteeringVector has layers {direction.layers}")
        v = direction[layer]
    else:
        if layer is not None:
            raise ValueError(f"layer={layer!r} chooses a layer of a SteeringVector; direction is a "
                             f"{type(direction).__name__}, which has one direction")
        if hasattr(direction, "direction") and not isinstance(direction, (torch.Tensor, np.ndarray)):
            v = direction.direction  # a fitted probe (raises sklearn's NotFittedError if it is not)
        else:
            v = direction
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"direction must be a SteeringVector, a fitted probe, or a tensor/array [d_model]; "
                            f"got {type(direction).__name__}")
    d = int(model.cfg.d_model)
    if v.ndim != 1 or v.numel() != d:
        raise ValueError(f"direction has shape {tuple(v.shape)}; the model needs a vector of width d_model = {d}")
    v = v.detach().to("cpu", torch.float64)
    if not torch.isfinite(v).all():
        raise ValueError("direction holds NaN or inf")
    norm = float(v.norm())
    if norm == 0.0 or not math.isfinite(norm):
        raise ValueError("direction is the zero vector: there is no direction to project out")
    return (v / norm).float()


def _directions(model: "TransformerBridge", r: torch.Tensor) -> list[tuple[_Write, torch.Tensor]]:
    """Each write with the unit direction projected out of it there: ``r̂``, or ``unit(g ⊙ r̂)``
    before a post-norm with gain ``g``."""
    out = []
    for w in _writes(model):
        u = r
        if w.post_norm is not None:
            gr = _gain(w.post_norm, w.hook).cpu() * r
            if float(gr.norm()) == 0.0:
                raise ValueError(f"direction: the post-norm gain at {w.hook} is zero along it; nothing to project")
            u = gr / gr.norm()
        out.append((w, u))
    return out


def write_directions(model: "TransformerBridge", direction: Direction, *,
                     layer: int | None = None) -> dict[str, Float[torch.Tensor, " d"]]:
    """``{hook name: unit direction [d]}`` that ``ablated()`` projects out at each write and that
    ``orthogonalize()`` projects out of the weight writing there (Arditi et al. 2024, eq. 5)."""
    return {w.hook: u for w, u in _directions(model, _unit(direction, model, layer))}


class _ParamEdit(EditHandle):
    """ROME's per-weight bookkeeping (``EditHandle``) for any parameter changed by a bake."""

    def __init__(self, model: Any, param: torch.nn.Parameter, name: str, before, after, applied):
        super().__init__(model, -1, None, before, after, applied)
        self._param, self._pname = param, name
        self._mark = self._along(param)

    @property
    def weight(self) -> torch.nn.Parameter:
        return self._param

    def _name(self) -> str:
        return self._pname


@torch.no_grad()
def _projected(p: torch.Tensor, u: torch.Tensor, layout: Layout) -> torch.Tensor:
    """``p − r̂r̂ᵀp`` in float32, where the residual axis is dim 0 of a Linear weight or of a bias,
    and the last dim of a Conv1D/Embedding weight."""
    x = p.detach().float()
    u = u.to(x.device)
    if x.ndim == 1:
        return x - (x @ u) * u
    if layout == "linear":  # [d_model, d_in]: W − u (uᵀW)
        return torch.addr(x, u, u @ x, alpha=-1.0)
    return torch.addr(x, x @ u, u, alpha=-1.0)  # [n, d_model]: W − (W u) uᵀ


@dataclass(eq=False)
class Orthogonalization:
    """A baked directional ablation; ``revert()`` restores every changed weight bit-exactly when
    bakes and ROME edits are reverted in reverse order (each weight's saved original is copied
    back). Out of order it subtracts its own ΔW, which restores the weights within float rounding
    (ROME's ``EditHandle`` semantics). A second revert, or one after the weights were changed
    outside the handles, raises ``ValueError`` and changes nothing. A tied unembedding is kept
    apart while any bake is live and re-tied when the last one is reverted."""

    model: Any = field(repr=False)
    direction: Float[torch.Tensor, " d"]  # unit, float32, CPU
    weights: tuple[str, ...]  # the parameters changed, by bridge path (e.g. "blocks.3.mlp.out.weight")
    reverted: bool = False
    _edits: list[_ParamEdit] = field(default_factory=list, repr=False)

    @torch.no_grad()
    def revert(self) -> None:
        """Take this bake out of the weights (see the class docstring for the order and refusals)."""
        if self.reverted:
            raise ValueError("this orthogonalization was already reverted; a second revert would subtract "
                             "its change from weights that no longer hold it")
        for e in self._edits:  # all checked before anything changes
            e._check_revertible()
        with exclusive(self.model, "a weight-orthogonalization revert"):
            for e in reversed(self._edits):
                e._undo()
            _release_tie(self.model)
            self.reverted = True

    def __enter__(self) -> "Orthogonalization":
        return self

    def __exit__(self, *exc) -> None:
        if not self.reverted:
            self.revert()


def _tied(model: "TransformerBridge") -> tuple[torch.nn.Module | None, torch.nn.Module]:
    """(the HF unembedding module if it shares the token embedding's weight, the embedding)."""
    embed = model.embed.original_component
    head = getattr(getattr(model, "unembed", None), "original_component", None)
    if head is not None and getattr(head, "weight", None) is embed.weight:
        return head, embed
    return None, embed


def _release_tie(model: "TransformerBridge") -> None:
    """One live bake fewer; the last one re-ties the unembedding to the (restored) embedding."""
    hf = model.original_model
    state = getattr(hf, _UNTIED, None)
    if state is None:
        return
    state["live"] -= 1
    if state["live"] == 0:
        state["head"].weight = model.embed.original_component.weight
        delattr(hf, _UNTIED)


def orthogonalize(model: "TransformerBridge", direction: Direction, *, layer: int | None = None) -> Orthogonalization:
    """Bake ``W ← W − r̂r̂ᵀW``, ``b ← b − r̂r̂ᵀb`` into every residual write in place (Arditi et al.
    2024, arXiv:2406.11717, eq. 5); before a sandwich post-norm with gain ``g`` the direction is
    ``unit(g ⊙ r̂)`` (module docstring), so every write is ⟂ ``r̂``. Equals ``ablated()``; returns the
    handle that reverts it. A tied unembedding keeps the original weights (it is untied while baked).
    ``layer`` picks the direction of a multi-layer SteeringVector."""
    r = _unit(direction, model, layer)
    plan = _directions(model, r)  # all validation before any weight changes
    edits: list[_ParamEdit] = []
    hf = model.original_model
    with torch.no_grad(), exclusive(model, "a weight orthogonalization"):
        head, embed = _tied(model)
        try:
            for w, u in plan:
                for pname in ("weight", "bias"):
                    p = getattr(w.module, pname, None)
                    if not isinstance(p, torch.Tensor):
                        continue
                    before, after, applied = set_weight(p, _projected(p, u, w.layout))
                    edits.append(_ParamEdit(model, p, f"{w.name}.{pname}", before, after, applied))
                    if head is not None and p is embed.weight:  # keep the unembedding as it was
                        head.weight = torch.nn.Parameter(before, requires_grad=p.requires_grad)
                        setattr(hf, _UNTIED, {"head": head, "live": 0})
                        head = None
        except BaseException:
            for e in reversed(edits):
                e._undo()
            state = getattr(hf, _UNTIED, None)
            if state is not None and state["live"] == 0:
                state["head"].weight = embed.weight
                delattr(hf, _UNTIED)
            raise
        state = getattr(hf, _UNTIED, None)
        if state is not None:
            state["live"] += 1
    return Orthogonalization(model, r, tuple(e._pname for e in edits), _edits=edits)


@contextmanager
def orthogonalized(model: "TransformerBridge", direction: Direction, *,
                   layer: int | None = None) -> Iterator[Orthogonalization]:
    """``orthogonalize()`` for the duration of a ``with`` block; reverted on exit, even on errors."""
    handle = orthogonalize(model, direction, layer=layer)
    try:
        yield handle
    finally:
        if not handle.reverted:
            handle.revert()


@contextmanager
def ablated(model: "TransformerBridge", direction: Direction, *, layer: int | None = None,
            naive: bool = False) -> Iterator[dict[str, Float[torch.Tensor, " d"]]]:
    """Run-time directional ablation ``x ← x − r̂r̂ᵀx`` at every residual write, every position and
    forward call of this context (Arditi et al. 2024, eq. 4), through ``steerlens.steps.intervene``;
    the same intervention as ``orthogonalize()`` (its logits equal the baked model's). Yields
    ``{hook: unit direction}``. ``naive=True`` projects ``r̂`` out of the sub-layer outputs in the
    stream instead (``hook_attn_out``/``hook_mlp_out``, after Gemma's post-norms): the same as the
    default on models without post-norms, not expressible in the weights on models with them."""
    r = _unit(direction, model, layer)
    if naive:
        dirs = {w.naive_hook: r for w in _writes(model)}
    else:
        dirs = {w.hook: u for w, u in _directions(model, r)}
    dev = next(model.parameters()).device
    on_dev = {hook: u.to(dev) for hook, u in dirs.items()}

    def hook_fn(u: torch.Tensor):
        return lambda x, step: ablate(x, u)

    with intervene(model, {hook: hook_fn(u) for hook, u in on_dev.items()}):
        yield dirs
