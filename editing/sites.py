"""ROME's sites in the model and its weight access: where the key is read, where the value
lands, which layer to edit, and the down-projection weight the rank-one update changes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from steerlens.hooks import resolve_layers
from steerlens.models import model_name

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def key_hook(layer: int) -> str:
    """ROME's key k: the input of the down-projection (the MLP's hidden activation)."""
    return f"blocks.{layer}.mlp.hook_post"


def out_hook(layer: int) -> str:
    """The raw down-projection output, where a rank-one update of W_out lands. On Gemma this is
    *before* the post-MLP RMSNorm (``hook_mlp_out`` sits after it); on GPT-2 they coincide."""
    return f"blocks.{layer}.mlp.hook_out"


def check_layer(model: "TransformerBridge", layer: int) -> int:
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise TypeError(f"layer must be an int, got {layer!r}")
    return resolve_layers(model, layer)[0]


#: edit layers measured on the shipped ``facts`` (benchmarks/README.md, "Layer choice"): within the
#: causal trace's MLP peak (Gemma 3 270M: layers 2-4), the earliest layer, where the keys of other
#: subjects of the same relation overlap least with the edited one's (C⁻¹-weighted)
MEASURED_LAYERS = {"gemma-3-270m": 2}


def default_layer(model: "TransformerBridge") -> int:
    """The measured layer for a model in ``MEASURED_LAYERS``, else a quarter of the way up the
    stack (ROME used 17 of 48 on GPT-2 XL): early-middle MLPs carry the subject's attributes at its
    last token (ROME §2). Trace a few facts (``editing.causal_trace``) to choose for a new model."""
    known = MEASURED_LAYERS.get(model_name(model))
    if known is not None and known < int(model.cfg.n_layers):
        return known
    return int(round(0.25 * model.cfg.n_layers - 0.01))


def down_proj(model: "TransformerBridge", layer: int) -> tuple[torch.nn.Parameter, bool]:
    """The HF down-projection weight of block ``layer`` (edited in place) and whether it is stored
    transposed (GPT-2's Conv1D keeps ``[d_mlp, d_model]``; Linear keeps ``[d_model, d_mlp]``)."""
    module = model.blocks[layer].mlp.out.original_component
    weight = module.weight
    if isinstance(module, torch.nn.Linear):
        return weight, False
    if type(module).__name__ == "Conv1D":
        return weight, True
    raise TypeError(f"block {layer}'s down-projection is a {type(module).__name__}; expected Linear or Conv1D")


def w_out(model: "TransformerBridge", layer: int) -> torch.Tensor:
    """W as ROME writes it, ``[d_model, d_mlp]`` (``v = W k``), float32 copy."""
    weight, transposed = down_proj(model, layer)
    w = weight.detach().float()
    return w.T.contiguous() if transposed else w.clone()
