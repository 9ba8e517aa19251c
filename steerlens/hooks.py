"""Hook names and layer indices: the one place that defines steerlens' conventions.

Layers are 0-based block indices; negative indices count from the end (-1 is the last block).
A vector "at layer L" is the output of block L: ``blocks.L.hook_resid_post`` (HF
``hidden_states[L + 1]``, llama.cpp ``direction.L``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

#: shorthand -> transformer-lens name template (``{}`` is the block index)
SHORTHANDS: dict[str, str] = {
    "resid_pre": "blocks.{}.hook_resid_pre",
    "resid_mid": "blocks.{}.hook_resid_mid",
    "resid_post": "blocks.{}.hook_resid_post",
    "attn_out": "blocks.{}.hook_attn_out",
    "mlp_out": "blocks.{}.hook_mlp_out",
    "mlp_pre": "blocks.{}.mlp.hook_pre",
    "mlp_post": "blocks.{}.mlp.hook_post",  # input of the down-projection (ROME's key)
    "z": "blocks.{}.attn.hook_z",
}
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_BEFORE_BLOCKS = ("embed.", "pos_embed.", "hook_embed", "hook_pos_embed")

Layers = int | Sequence[int] | Literal["all"] | None


def n_layers(model: "TransformerBridge") -> int:
    return int(model.cfg.n_layers)


def resolve_layers(model: "TransformerBridge", layers: Layers) -> list[int]:
    """``None``/``"all"`` -> every block; ints (negative from the end) -> sorted unique indices."""
    n = n_layers(model)
    if layers is None or layers == "all":
        return list(range(n))
    if isinstance(layers, str):
        raise ValueError(f"layers must be an int, a list of ints or 'all', got {layers!r}")
    items = [layers] if isinstance(layers, int) else list(layers)
    if not items:
        raise ValueError("layers is empty")
    out = []
    for layer in items:
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise TypeError(f"layers must hold ints, got {layer!r}")
        if not -n <= layer < n:
            raise ValueError(f"layer {layer} is out of range for a model with {n} layers (0..{n - 1})")
        out.append(layer % n)
    return sorted(set(out))


def resolve_hooks(
    model: "TransformerBridge", hooks: str | Sequence[str], layers: Layers = None
) -> list[str]:
    """Expand shorthands (``"resid_post"`` with ``layers``) and check full names exist.

    Unknown names raise ``ValueError`` listing close matches.
    """
    names = [hooks] if isinstance(hooks, str) else list(hooks)
    if not names:
        raise ValueError("hooks is empty: pass a hook name such as 'resid_post'")
    known = model.hook_dict
    out: list[str] = []
    for name in names:
        if name in SHORTHANDS:
            out += [SHORTHANDS[name].format(layer) for layer in resolve_layers(model, layers)]
        elif name in known:
            out.append(name)
        else:
            m = _BLOCK.match(name)
            if m and int(m.group(1)) >= n_layers(model):
                raise ValueError(f"hook {name!r}: the model has {n_layers(model)} layers")
            close = difflib.get_close_matches(name, list(known) + list(SHORTHANDS), n=5, cutoff=0.6)
            hint = f" Close matches: {close}." if close else ""
            raise ValueError(
                f"unknown hook {name!r}.{hint} Shorthands: {sorted(SHORTHANDS)}; "
                "full names are in model.hook_dict."
            )
    return list(dict.fromkeys(out))


def hook_layer(name: str) -> int | None:
    """Block index of a ``blocks.L.*`` hook, else ``None``."""
    m = _BLOCK.match(name)
    return int(m.group(1)) if m else None


def hook_depth(model: "TransformerBridge", name: str) -> int:
    """-1 before the first block, L inside block L, ``n_layers`` after the last block."""
    layer = hook_layer(name)
    if layer is not None:
        return layer
    return -1 if name.startswith(_BEFORE_BLOCKS) else n_layers(model)


def hook_kind(name: str) -> str:
    """The shorthand of a block hook (``blocks.6.hook_resid_post`` -> ``resid_post``), or the name."""
    layer = hook_layer(name)
    if layer is not None:
        for short, template in SHORTHANDS.items():
            if template.format(layer) == name:
                return short
    return name


def count_hooks(model: "TransformerBridge") -> int:
    """Every torch forward/backward (pre-)hook on any module of ``model``, the HF model included.

    A public function must leave this number as it found it. (transformer-lens installs a few
    internal hooks during a model's first forward pass: compare counts taken after one.)"""
    total = 0
    for module in model.modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            total += len(getattr(module, attr, {}))
    return total
