"""Apply steering while the model runs: the ``Steering`` context manager (``steer.apply``).

Each forward call's batch, padding, token indices and prompt-vs-generated columns come from the
core step tracker (``steerlens.steps``): padding is never steered, ``positions="generated"``
steers the residuals of generated tokens (the first new token is predicted from the prompt's last
position and is not affected: use ``"all"`` or ``[-1]`` to steer that position too), explicit
positions index the prompt's tokens (negative: from its end).

A ``Steering`` holds only its checked, immutable inputs; it steers the forward calls of the
thread (or asyncio task) that entered it, so several threads may steer one model at once, each
with its own vectors. Hooks are removed on exit, also after an exception.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from steer.inputs import Coeff, Layers, Positions, Sites, VectorLike, plan
from steer.operators import Op, apply_op
from steerlens.hooks import SHORTHANDS
from steerlens.steps import Step, intervene

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


class Steering:
    """Context manager that steers ``model`` while it is active (see ``apply``).

    ``on_nonfinite(bad_rows)``: instead of raising when steering makes a row's activations
    non-finite, leave those rows unsteered in that call and report them (``bool [batch]``); the
    serving engine uses it to fail one request without failing the rows batched with it."""

    def __init__(self, model: "TransformerBridge", vector: VectorLike, *, coeff: Coeff = None,
                 layers: Layers = None, op: Op = "add", positions: Positions = "all", sites: Sites = None,
                 force: bool = False, on_nonfinite: Callable[[torch.Tensor], Any] | None = None):
        p = plan(model, vector, coeff=coeff, layers=layers, op=op, positions=positions, sites=sites, force=force)
        self.model, self.op, self.layers, self.sites = model, p.op, p.layers, p.sites
        self.coeff, self.n_rows, self.positions = p.coeff, p.n_rows, p.positions
        self._dirs = p.dirs  # {layer: float32 [d] | [rows, d] | EraserTensors}, CPU; moved/cast on first use
        self._params_cache: dict[tuple, tuple[Any, Any]] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._on_nonfinite = on_nonfinite

    def hook_names(self) -> list[str]:
        return [SHORTHANDS[site].format(layer) for layer in self.layers for site in self.sites]

    # -- context -------------------------------------------------------------------------------
    def __enter__(self) -> "Steering":
        if getattr(self._local, "ctx", None) is not None:
            raise RuntimeError("this Steering context is already active in this thread")
        hooks: dict[str, list] = {}
        for layer in self.layers:
            for site in self.sites:
                hooks.setdefault(SHORTHANDS[site].format(layer), []).append(self._make_hook(layer))
        ctx = intervene(self.model, hooks)
        ctx.__enter__()
        self._local.ctx = ctx
        return self

    def __exit__(self, *exc: Any) -> None:
        ctx, self._local.ctx = getattr(self._local, "ctx", None), None
        if ctx is not None:
            ctx.__exit__(*exc)

    # -- hooks ---------------------------------------------------------------------------------
    def select(self, step: Step) -> torch.Tensor | None:
        """``[batch, seq]`` bool of the positions to steer in this call (``None``: all of them)."""
        if self.n_rows > 1 and step.batch != self.n_rows:
            raise ValueError(f"steering was given {self.n_rows} per-row vectors/coefficients "
                             f"but the batch has {step.batch} rows")
        pos = self.positions
        if pos == "all":
            sel = step.real
        elif pos == "prompt":
            sel = step.real & ~step.generated
        elif pos == "generated":
            sel = step.generated
        else:
            per_row = isinstance(pos, tuple)
            if per_row and len(pos) != step.batch:
                raise ValueError(f"positions has {len(pos)} per-row lists but the batch has {step.batch} rows")
            sel = torch.zeros_like(step.real)
            for r in range(step.batch):
                idx = pos[r] if per_row else pos
                n_prompt = int(step.prompt_len[r])
                if step.new_sequence:
                    bad = [i for i in idx if not -n_prompt <= i < n_prompt]
                    if bad:
                        raise ValueError(f"positions {bad} are outside the prompt of row {r} ({n_prompt} tokens): "
                                         f"explicit positions index prompt tokens, -{n_prompt}..{n_prompt - 1}")
                want = torch.tensor([i % n_prompt for i in idx], device=step.index.device, dtype=step.index.dtype)
                sel[r] = torch.isin(step.index[r], want)
            sel &= step.real & ~step.generated
        return sel

    def _make_hook(self, layer: int):
        def hook(x: torch.Tensor, step: Step | None) -> torch.Tensor:
            if step is None:
                raise RuntimeError("steer: a residual hook ran outside a forward call of the model; "
                                   "call the model through the bridge (model(...), model.generate(...))")
            if x.shape[0] != step.batch or x.shape[1] != step.seq:
                raise RuntimeError(f"steer: hook saw shape {tuple(x.shape)}, expected [{step.batch}, {step.seq}, d]")
            sel = self.select(step)
            if not bool(sel.any()):
                return x
            v, c = self._params(layer, x)
            out = x + v if self.op == "add" else apply_op(self.op, x, v, c)
            if not bool(torch.isfinite(out).all()):
                if self._on_nonfinite is not None:  # leave those rows unsteered and report them
                    bad = ((~torch.isfinite(out)).any(-1) & sel).any(-1)
                    self._on_nonfinite(bad.cpu())
                    sel = sel & ~bad[:, None]
                    return torch.where(sel[..., None], out, x)
                raise ValueError(f"steering at layer {layer} made the activations non-finite (coeff={self._coeff_repr()} "
                                 f"overflows {x.dtype}): use a smaller coeff")
            return out if bool(sel.all()) else torch.where(sel[..., None], out, x)

        return hook

    def _coeff_repr(self) -> Any:
        return self.coeff.tolist() if isinstance(self.coeff, torch.Tensor) else self.coeff

    def _params(self, layer: int, x: torch.Tensor) -> tuple[Any, Any]:
        """``add``: the delta ``a·v`` in x's dtype; ``leace``: (float32 EraserTensors, None); other
        ops: (float32 v, coeff), broadcastable."""
        key = (layer, x.dtype, x.device)
        got = self._params_cache.get(key)
        if got is not None:
            return got
        with self._lock:
            if self.op == "leace":
                got = (self._dirs[layer].to(x.device), None)
            else:
                v = self._dirs[layer].to(x.device)
                v = v[:, None, :] if v.ndim == 2 else v
                c = self.coeff
                c = c.to(x.device).view(-1, 1, 1) if isinstance(c, torch.Tensor) else c
                got = ((c * v).to(x.dtype), None) if self.op == "add" else (v, c)
            self._params_cache[key] = got
        return got


def apply(model: "TransformerBridge", vector: VectorLike, *, coeff: Coeff = None, layers: Layers = None,
          op: Op = "add", positions: Positions = "all", sites: Sites = None, force: bool = False) -> Steering:
    """Steer ``model`` inside a ``with`` block::

        with steer.apply(model, vector, coeff=4.0, layers=[6], op="add", positions="all"):
            model(...)   # or steer.generate(model, ...) / model.generate(...)

    ``vector``: a ``SteeringVector``, a list with one per batch row (``None`` leaves a row
    unsteered), ``{layer: tensor[d] | tensor[batch, d]}`` (negative layers count from the end),
    or for ``op="leace"`` a ``ConceptEraser`` (``steer.fit_eraser``; one for all rows). ``coeff``:
    a number or one per row; ``None`` takes the vector's calibrated coefficient, else 1
    (``ablate`` ignores it; for ``clamp`` it is the projection to set; ``erase`` takes none).
    ``layers``: default each row's vector's own layers; a one-layer vector may be applied at any
    layers, an eraser only where it was fitted. ``op``: ``add`` (h + a·v), ``ablate``
    (h − (h·v̂)v̂), ``clamp`` (h + (c − h·v̂)v̂), ``add_norm`` (h + a·‖h‖·v̂), ``erase`` (LEACE:
    h − L·R·(h − b)). ``positions``: ``"all"``, ``"prompt"``, ``"generated"`` or prompt token
    indices (negative: from the end of the prompt; or one list per row). ``sites``: default the
    hook the vector was taken at (``resid_post`` for a dict); a vector is added only where it was
    taken, while ``op="ablate"`` may remove its direction at any residual write
    (``"resid_post"``, ``"resid_pre"``, ``"attn_out"``, ``"mlp_out"``; ``"all"`` = the
    refusal-direction ablation sites). ``force``: accept a vector or eraser whose model
    fingerprint differs (widths must still match).

    The block steers only the forward calls of the thread that entered it.
    """
    return Steering(model, vector, coeff=coeff, layers=layers, op=op, positions=positions, sites=sites, force=force)
