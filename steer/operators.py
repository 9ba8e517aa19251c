"""Steering operators: pure tensor functions on residual activations ``h [..., d]``.

``v`` broadcasts against ``h`` (``[d]``, or ``[batch, 1, d]`` for one vector per row) and so do
the coefficients (a float, or ``[batch, 1, 1]``). ``v̂ = v / ‖v‖``; a zero ``v`` leaves ``h``
unchanged under every operator (so a row without a vector is simply not steered).
``leace`` takes a fitted affine eraser (``EraserTensors``) instead of ``v``.
Projections are computed in float32 and cast back to ``h``'s dtype (bf16-safe).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, get_args

import torch
from jaxtyping import Float

Op = Literal["add", "ablate", "clamp", "add_norm", "leace"]
OPS: tuple[str, ...] = get_args(Op)
#: the ops that take a direction ``v`` (``leace`` takes ``EraserTensors``)
VECTOR_OPS: tuple[str, ...] = tuple(op for op in OPS if op != "leace")


class EraserTensors(NamedTuple):
    """One layer's affine eraser ``r(h) = h − L·R·(h − b)`` in concept-erasure's ``LeaceEraser``
    layout: ``proj_left`` L ``[d, k]``, ``proj_right`` R ``[k, d]``, ``bias`` b ``[d]``."""

    proj_left: Float[torch.Tensor, "d k"]
    proj_right: Float[torch.Tensor, "k d"]
    bias: Float[torch.Tensor, " d"]

    def to(self, device: torch.device | str) -> "EraserTensors":
        return EraserTensors(*(t.to(device) for t in self))


def unit(v: Float[torch.Tensor, "... d"]) -> Float[torch.Tensor, "... d"]:
    """``v / ‖v‖`` in float32, with zero vectors left at zero."""
    v = v.float()
    norm = v.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, v / norm.clamp_min(1e-12), torch.zeros_like(v))


def add(h: Float[torch.Tensor, "... d"], v: Float[torch.Tensor, "... d"], a: float | torch.Tensor = 1.0) -> Float[torch.Tensor, "... d"]:
    """Activation addition: ``h ← h + a·v`` (ActAdd, CAA)."""
    return h + (a * v).to(h.dtype)


def ablate(h: Float[torch.Tensor, "... d"], v: Float[torch.Tensor, "... d"]) -> Float[torch.Tensor, "... d"]:
    """Directional ablation: ``h ← h − (h·v̂)v̂`` (Arditi et al. 2024, arXiv:2406.11717, eq. 4)."""
    u = unit(v)
    proj = (h.float() * u).sum(-1, keepdim=True)
    return (h.float() - proj * u).type_as(h)


def clamp(h: Float[torch.Tensor, "... d"], v: Float[torch.Tensor, "... d"], c: float | torch.Tensor = 0.0) -> Float[torch.Tensor, "... d"]:
    """Set the projection on ``v̂`` to ``c``: ``h ← h + (c − h·v̂)v̂``."""
    u = unit(v)
    proj = (h.float() * u).sum(-1, keepdim=True)
    c = c.float() if isinstance(c, torch.Tensor) else c
    return (h.float() + (c - proj) * u).type_as(h)


def add_norm(h: Float[torch.Tensor, "... d"], v: Float[torch.Tensor, "... d"], a: float | torch.Tensor = 1.0) -> Float[torch.Tensor, "... d"]:
    """Norm-matched addition: ``h ← h + a·‖h‖·v̂`` (``a`` is a fraction of each position's norm)."""
    u = unit(v)
    norm = h.float().norm(dim=-1, keepdim=True)
    a = a.float() if isinstance(a, torch.Tensor) else a
    return (h.float() + a * norm * u).type_as(h)


def leace(h: Float[torch.Tensor, "... d"], eraser: EraserTensors) -> Float[torch.Tensor, "... d"]:
    """LEACE concept erasure ``h ← h − L·R·(h − b)``, where ``L·R = W⁺P_{WΣ_XZ}W`` and ``b = E[X]``
    (Belrose et al. 2023, "LEACE: Perfect linear concept erasure in closed form", arXiv:2306.03819)."""
    x = h.float()
    return (x - ((x - eraser.bias) @ eraser.proj_right.T) @ eraser.proj_left.T).type_as(h)


def apply_op(op: Op, h: torch.Tensor, v: Any, coeff: float | torch.Tensor | None) -> torch.Tensor:
    """Dispatch by name (``ablate`` and ``leace`` ignore ``coeff``; for ``leace`` ``v`` is the
    layer's ``EraserTensors``)."""
    if op == "add":
        return add(h, v, coeff)
    if op == "ablate":
        return ablate(h, v)
    if op == "clamp":
        return clamp(h, v, coeff)
    if op == "add_norm":
        return add_norm(h, v, coeff)
    if op == "leace":
        return leace(h, v)
    raise ValueError(f"op must be one of {OPS}, got {op!r}")
