"""The one truncated forward: run the model only as deep as a caller needs.

On Gemma 3 270M the 262k-wide unembedding costs more than all 18 blocks together, so everything
that reads activations (``capture``, causal tracing, ROME) stops the forward pass at the deepest
hook it needs and computes logits only where it asks for them (``logits_at``). Hooks are
``fn(x, step)`` functions run through ``steerlens.steps.intervene``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import torch
from jaxtyping import Float, Int

from steerlens.steps import HookFn, intervene

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

#: where the normalised final residual is (the unembedding's input)
FINAL = "ln_final.hook_out"


def stop(x: torch.Tensor) -> NoReturn:
    """End the forward pass here (transformer-lens catches this and returns ``x``)."""
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    raise StopAtLayerException(x)


def _hooks(pairs: Sequence[tuple[str, HookFn]]) -> dict[str, list[HookFn]]:
    out: dict[str, list[HookFn]] = {}
    for name, fn in pairs:
        out.setdefault(name, []).append(fn)
    return out


def run_to(model: "TransformerBridge", ids: Int[torch.Tensor, "batch pos"], mask: Int[torch.Tensor, "batch pos"],
           name: str, hooks: Sequence[tuple[str, HookFn]] = ()) -> torch.Tensor:
    """The activation at hook ``name`` (after ``hooks`` ran); the forward pass stops there."""
    got: dict[str, torch.Tensor] = {}

    def grab(x: torch.Tensor, step: Any) -> NoReturn:
        got["x"] = x
        stop(x)

    dev = next(model.parameters()).device
    with intervene(model, _hooks([*hooks, (name, grab)])):
        model(ids.to(dev), attention_mask=mask.to(dev), return_type=None)
    if "x" not in got:
        raise RuntimeError(f"hook {name!r} did not fire during the forward pass")
    return got["x"]


def final_hidden(model: "TransformerBridge", ids: Int[torch.Tensor, "batch pos"],
                 mask: Int[torch.Tensor, "batch pos"],
                 hooks: Sequence[tuple[str, HookFn]] = ()) -> Float[torch.Tensor, "batch pos d_model"]:
    """The normalised final residual; the unembedding runs only where ``logits_at`` asks."""
    return run_to(model, ids, mask, FINAL, hooks)


def logits_at(model: "TransformerBridge", hidden: Float[torch.Tensor, "... d_model"]) -> Float[torch.Tensor, "... vocab"]:
    """Logits (float32) of selected final-residual rows."""
    return model.unembed(hidden).float()
