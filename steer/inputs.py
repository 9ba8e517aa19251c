"""Input conversion for steering: vectors, coefficients, layers, sites and positions, checked and
turned into plain tensors. Every user error is a ``ValueError``/``TypeError`` naming the
parameter, the value and what is allowed."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Union, get_args

import torch

from steer.leace import ConceptEraser
from steer.operators import OPS, Op
from steer.vector import SteeringVector
from steerlens.hooks import hook_kind, resolve_layers

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

PositionName = Literal["all", "prompt", "generated"]
#: a name, token indices of the prompt for every row (negative: from its end), or one list per row
Positions = Union[PositionName, Sequence[int], Sequence[Sequence[int]]]
Site = Literal["resid_post", "resid_pre", "attn_out", "mlp_out"]
SITES: tuple[str, ...] = get_args(Site)
#: every write into the residual stream (Arditi et al. 2024: ablate at each block's input and
#: after its attention and MLP)
ABLATION_SITES: tuple[str, ...] = ("resid_pre", "attn_out", "mlp_out")
#: a SteeringVector, one per batch row (``None``: that row is not steered),
#: ``{layer: tensor[d] | tensor[batch, d]}``, or (with ``op="leace"``) a ConceptEraser
VectorLike = Union[SteeringVector, Sequence[Union[SteeringVector, None]], Mapping[int, torch.Tensor], ConceptEraser]
Coeff = Union[float, Sequence[float], torch.Tensor, None]
Layers = Union[int, Sequence[int], Literal["all"], None]
Sites = Union[Site, Sequence[Site], Literal["all"], None]

#: the largest ‖a·v‖ accepted: float32 norms square the residual (overflow near 1.8e19), and no
#: real steering comes within orders of magnitude of this
MAX_SHIFT = 1e15


@dataclass(frozen=True)
class Plan:
    """What to apply, checked: per layer a float32 direction ``[d]`` or ``[rows, d]`` (or the
    layer's ``EraserTensors``), the coefficient(s), where and at which positions."""

    op: str
    layers: list[int]
    sites: tuple[str, ...]
    dirs: dict[int, Any]
    coeff: float | torch.Tensor | None
    n_rows: int  # 1: the same for every row
    positions: Any


def plan(model: "TransformerBridge", vector: VectorLike, *, coeff: Coeff = None, layers: Layers = None,
         op: Op = "add", positions: Positions = "all", sites: Sites = None, force: bool = False) -> Plan:
    """Check every steering argument against ``model`` and convert it (see ``steer.apply``)."""
    if op == "erase":  # the name until 0.1: "erase" now means ROME's fact erasure only (editing.erase)
        warnings.warn("op='erase' is now op='leace' (LEACE concept erasure)", FutureWarning, stacklevel=3)
        op = "leace"
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    pos = check_positions(positions)
    if op == "leace":
        eraser = check_eraser(model, vector, coeff, force)
        site = hook_kind(eraser.hook)
        chosen = check_sites(sites, default=site)
        if chosen != (site,):
            raise ValueError(f"the eraser was fitted on {eraser.hook!r} activations: apply it with "
                             f"sites={site!r} (or leave sites unset), not {list(chosen)}")
        have = sorted(eraser.erasers)
        want = have if layers is None else resolve_layers(model, layers)
        missing = [layer for layer in want if layer not in have]
        if missing:
            raise ValueError(f"layers: the eraser was not fitted at layers {missing} (it has {have})")
        return Plan(op, want, chosen, {layer: eraser.erasers[layer] for layer in want}, None, 1, pos)

    rows, hooks = row_vectors(model, vector, force)
    chosen = check_sites(sites, default=_vector_site(hooks))
    if op != "ablate" and hooks and set(hooks) != set(chosen):
        raise ValueError(f"sites={list(chosen)}, but the vector was taken at {sorted(set(hooks))}: "
                         "it is added where it was taken (leave sites unset); only op='ablate' may "
                         "remove a residual direction at other sites")
    want, per_row = row_layers(model, rows, layers)
    d_model = int(model.cfg.d_model)
    n_rows = len(rows)
    dirs = {layer: _stack(per_row, layer, d_model) for layer in want}
    c = check_coeff(coeff, vector, op, n_rows)
    rows_c = len(c) if isinstance(c, torch.Tensor) else 1
    n_rows = max(n_rows, rows_c)
    if op in ("add", "clamp"):
        _check_shift(dirs, c, op)
    return Plan(op, want, chosen, dirs, c, n_rows, pos)


def _vector_site(hooks: list[str]) -> str:
    kinds = sorted(set(hooks))
    if len(kinds) > 1:
        raise ValueError(f"the per-row vectors were taken at different hooks {kinds}; steer one hook at a time")
    kind = kinds[0] if kinds else "resid_post"
    if kind not in SITES:
        raise ValueError(f"the vector was taken at {kind!r}, which is not a residual-stream write that can be "
                         f"steered; steerable sites: {SITES}")
    return kind


def check_sites(sites: Sites, *, default: str) -> tuple[str, ...]:
    """``None`` -> ``(default,)``; ``"all"`` -> the ablation sites; else a checked tuple."""
    if sites is None:
        return (default,)
    if sites == "all":
        return ABLATION_SITES
    items = [sites] if isinstance(sites, str) else list(sites)
    if not items:
        raise ValueError("sites is empty")
    for s in items:
        if s not in SITES:
            raise ValueError(f"sites must be among {SITES} (or 'all'), got {s!r}")
    return tuple(dict.fromkeys(items))


def check_positions(positions: Positions) -> Any:
    """A position name, a list of ints, or a tuple of int tuples (one per row)."""
    if isinstance(positions, str):
        if positions not in get_args(PositionName):
            raise ValueError(f"positions must be 'all', 'prompt', 'generated' or token indices, got {positions!r}")
        return positions
    if isinstance(positions, torch.Tensor):
        positions = positions.tolist()
    if not isinstance(positions, Sequence) or isinstance(positions, bytes):
        raise TypeError(f"positions must be 'all', 'prompt', 'generated' or token indices, got {positions!r}")
    items = list(positions)
    if not items:
        raise ValueError("positions is empty")
    if all(is_int(i) for i in items):
        return [int(i) for i in items]
    if all(isinstance(r, (list, tuple)) and r and all(is_int(i) for i in r) for r in items):
        return tuple(tuple(int(i) for i in r) for r in items)
    raise TypeError("positions must be 'all', 'prompt', 'generated', a list of ints or one list of ints per row")


def is_int(i: Any) -> bool:
    return isinstance(i, numbers.Integral) and not isinstance(i, bool)


def _is_real(c: Any) -> bool:
    return isinstance(c, numbers.Real) and not isinstance(c, bool)


def check_eraser(model, eraser: Any, coeff: Coeff, force: bool) -> ConceptEraser:
    if not isinstance(eraser, ConceptEraser):
        raise ValueError(f"op='leace' needs a ConceptEraser (see steer.fit_eraser), got {type(eraser).__name__}")
    if coeff is not None:
        raise ValueError(f"op='leace' takes no coeff (the eraser is fixed), got {coeff!r}")
    eraser.check_compatible(model, force=force)
    return eraser


def row_vectors(model, vector: VectorLike, force: bool) -> tuple[list[dict[int, torch.Tensor] | None], list[str]]:
    """-> per-row ``{layer: [d]}`` (one entry when shared by every row) and the hooks they were taken at."""
    d_model = int(model.cfg.d_model)
    if isinstance(vector, ConceptEraser):
        raise ValueError("a ConceptEraser is applied with op='leace'")
    if isinstance(vector, SteeringVector):
        vector.check_compatible(model, force=force)
        return [dict(vector.directions)], [hook_kind(vector.hook)]
    if isinstance(vector, Mapping):
        return _dict_rows(model, vector, d_model), []
    if isinstance(vector, Sequence) and not isinstance(vector, (str, bytes)):
        items = list(vector)
        if not items:
            raise ValueError("vector is an empty list")
        rows: list[dict[int, torch.Tensor] | None] = []
        hooks = []
        for i, v in enumerate(items):
            if v is None:
                rows.append(None)
                continue
            if not isinstance(v, SteeringVector):
                raise TypeError(f"vector[{i}] is {type(v).__name__}, expected a SteeringVector or None")
            v.check_compatible(model, force=force)
            rows.append(dict(v.directions))
            hooks.append(hook_kind(v.hook))
        if not hooks:
            raise ValueError("no steering vector given (every row is None)")
        return rows, hooks
    raise TypeError(f"vector must be a SteeringVector, a list of them or {{layer: tensor}}, got {type(vector).__name__}")


def _dict_rows(model, vector: Mapping, d_model: int) -> list[dict[int, torch.Tensor]]:
    n_layers = int(model.cfg.n_layers)
    rows = None
    out: dict[int, torch.Tensor] = {}
    for key, v in vector.items():
        if not is_int(key):
            raise TypeError(f"vector keys must be layer ints, got {key!r}")
        if not -n_layers <= key < n_layers:
            raise ValueError(f"vector has a direction at layer {key}, out of range for a model with "
                             f"{n_layers} layers ({-n_layers}..{n_layers - 1})")
        layer = int(key) % n_layers
        if layer in out:
            raise ValueError(f"vector names layer {layer} twice (as {key} and {layer - n_layers if key >= 0 else layer})")
        v = as_direction(v, f"the direction at layer {key}")
        if v.ndim not in (1, 2) or v.shape[-1] != d_model:
            raise ValueError(f"the tensor at layer {key} has shape {tuple(v.shape)}; expected "
                             f"[{d_model}] or [batch, {d_model}] (the model's d_model is {d_model})")
        if not torch.isfinite(v).all():
            raise ValueError(f"the tensor at layer {key} holds NaN or inf")
        if v.ndim == 2:
            if rows is not None and rows != v.shape[0]:
                raise ValueError("per-row tensors disagree on the number of rows")
            rows = v.shape[0]
        out[layer] = v
    if not out:
        raise ValueError("vector is empty")
    if rows is None:
        return [out]
    return [{layer: (v[r] if v.ndim == 2 else v) for layer, v in out.items()} for r in range(rows)]


def as_direction(v: Any, what: str) -> torch.Tensor:
    """A float32 CPU tensor from a tensor, array or list of numbers; anything else is a TypeError."""
    if isinstance(v, (str, bytes)) or v is None:
        raise TypeError(f"{what} is a {type(v).__name__}, expected a tensor")
    try:
        t = torch.as_tensor(v)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise TypeError(f"{what} is a {type(v).__name__} that is not a tensor of numbers") from None
    if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"{what} has dtype {t.dtype}, expected real numbers")
    return t.detach().to("cpu", torch.float32)


def row_layers(model, rows: list[dict[int, torch.Tensor] | None], layers: Layers) -> tuple[list[int], list[dict[int, torch.Tensor] | None]]:
    """The layers to hook and each row's direction per layer.

    ``layers=None``: every row acts at its own layers. Given ``layers``: a row whose vector has
    all of them acts there, a one-layer vector is applied at each of them, anything else is an error.
    """
    n = int(model.cfg.n_layers)
    for i, r in enumerate(rows):
        bad = [layer for layer in (r or {}) if layer >= n]
        if bad:
            raise ValueError(f"the vector{f' of row {i}' if len(rows) > 1 else ''} has layers {bad}, "
                             f"but the model has {n} layers (0..{n - 1})")
    if layers is None:
        return sorted({layer for r in rows if r for layer in r}), rows
    want = resolve_layers(model, layers)
    out: list[dict[int, torch.Tensor] | None] = []
    for i, r in enumerate(rows):
        if r is None:
            out.append(None)
        elif all(layer in r for layer in want):
            out.append({layer: r[layer] for layer in want})
        elif len(r) == 1:
            only = next(iter(r.values()))
            out.append({layer: only for layer in want})
        else:
            row = f" of row {i}" if len(rows) > 1 else ""
            raise ValueError(f"layers={want}: the vector{row} has directions at {sorted(r)} only; "
                             "only a one-layer vector can be applied at other layers")
    return want, out


def _stack(rows: list[dict[int, torch.Tensor] | None], layer: int, d_model: int) -> torch.Tensor:
    pick = [r[layer] if r is not None and layer in r else torch.zeros(d_model) for r in rows]
    return pick[0] if len(pick) == 1 else torch.stack(pick)


def check_coeff(coeff: Coeff, vector: Any, op: str, n_rows: int) -> float | torch.Tensor:
    """A finite float, or one per row (a float32 tensor)."""
    if coeff is None:
        if op == "clamp":
            raise ValueError("op='clamp' needs coeff: the value to set the projection to")
        if isinstance(vector, SteeringVector):
            coeff = vector.coeff if vector.coeff is not None else 1.0
        elif isinstance(vector, Sequence) and not isinstance(vector, (Mapping, str, bytes)):
            coeff = [1.0 if v is None or v.coeff is None else v.coeff for v in vector]
        else:
            coeff = 1.0
    if isinstance(coeff, torch.Tensor):
        if coeff.ndim > 1:
            raise ValueError(f"coeff must be a number or one per row, got a tensor of shape {tuple(coeff.shape)}")
        coeff = coeff.tolist()
    if _is_real(coeff):
        return _finite(coeff, "coeff")
    if isinstance(coeff, (str, bytes)) or not isinstance(coeff, Sequence):
        raise TypeError(f"coeff must be a number or a list of numbers (one per row), got {coeff!r}")
    vals = list(coeff)
    for i, c in enumerate(vals):
        if not _is_real(c):
            raise TypeError(f"coeff[{i}] must be a number, got {c!r}")
    vals = [_finite(c, f"coeff[{i}]") for i, c in enumerate(vals)]
    if not vals:
        raise ValueError("coeff is an empty list")
    if n_rows > 1 and len(vals) != n_rows:
        raise ValueError(f"coeff has {len(vals)} values for {n_rows} per-row vectors")
    return torch.tensor(vals)


def _finite(c: numbers.Real, name: str) -> float:
    try:
        f = float(c)
    except OverflowError:  # an int beyond float range
        raise ValueError(f"{name} (an integer of {len(str(abs(int(c))))} digits) is too large: it overflows a float") from None
    if not math.isfinite(f):
        raise ValueError(f"{name} must be finite, got {c!r}")
    return f


def _check_shift(dirs: dict[int, torch.Tensor], coeff: float | torch.Tensor, op: str) -> None:
    c = coeff.abs().max().item() if isinstance(coeff, torch.Tensor) else abs(coeff)
    for layer, v in dirs.items():
        size = c * (float(v.norm(dim=-1).max()) if op == "add" else 1.0)
        if size > MAX_SHIFT:
            what = "‖coeff·v‖" if op == "add" else "|coeff| (the projection to set)"
            raise ValueError(f"coeff={coeff if not isinstance(coeff, torch.Tensor) else coeff.tolist()} is too large: "
                             f"{what} = {size:.3g} at layer {layer} exceeds {MAX_SHIFT:.0e}, which overflows "
                             "the model's float32 norms")


def slice_rows(vector: VectorLike, coeff: Coeff, positions: Positions, sl: slice, n: int) -> tuple[Any, Coeff, Positions]:
    """Per-row vectors, coefficients and positions of the prompts in ``sl`` (of ``n``)."""
    if isinstance(vector, Sequence) and not isinstance(vector, (SteeringVector, Mapping, str, bytes)):
        if len(vector) != n:
            raise ValueError(f"vector has {len(vector)} per-row vectors for {n} prompts")
        vector = list(vector)[sl]
    elif isinstance(vector, Mapping):
        vector = {k: as_direction(v, f"the direction at layer {k}") for k, v in vector.items()}
        for v in vector.values():
            if v.ndim == 2 and len(v) != n:
                raise ValueError(f"vector has per-row tensors of {len(v)} rows for {n} prompts")
        vector = {k: (v[sl] if v.ndim == 2 else v) for k, v in vector.items()}
    if isinstance(coeff, torch.Tensor):
        coeff = coeff.tolist()
    if isinstance(coeff, Sequence) and not isinstance(coeff, (str, bytes)):
        if len(coeff) != n:
            raise ValueError(f"coeff has {len(coeff)} values for {n} prompts")
        coeff = list(coeff)[sl]
    pos = check_positions(positions)
    if isinstance(pos, tuple):
        if len(pos) != n:
            raise ValueError(f"positions has {len(pos)} per-row lists for {n} prompts")
        pos = pos[sl]
    return vector, coeff, pos
