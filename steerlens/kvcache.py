"""Row operations on a batched, left-padded HF ``DynamicCache`` for iteration-level (continuous)
batching: keep some rows, join two batches, drop padding columns no row needs.

A batch is ``(cache, mask)``: ``mask [batch, L]`` marks the real tokens of the ``L`` columns the
cache has seen, every row's tokens end at column ``L - 1`` (left padding). Full-attention layers
hold all ``L`` columns; sliding-window layers (Gemma 3) hold the last ``min(L, window - 1)`` and
count ``L`` in ``cumulative_length``. Joining pads the shorter batch on the left in every layer,
so each row sees exactly the state it would have in a left-padded batch of its own: padded
columns are masked out of attention and position ids come from ``cumsum(mask) - 1``.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Int

__all__ = ["join", "keep_rows", "trim_padding"]


def _layers(cache: Any) -> list[Any]:
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"expected a transformers DynamicCache with .layers, got {type(cache).__name__}")
    for i, layer in enumerate(layers):
        if not getattr(layer, "is_initialized", False) or layer.keys is None:
            raise ValueError(f"cache layer {i} is empty: run a forward pass (prefill) before batching rows")
    return layers


def keep_rows(cache: Any, mask: Int[torch.Tensor, "batch L"], rows: Int[torch.Tensor, " keep"]
              ) -> Int[torch.Tensor, "keep L"]:
    """Keep only ``rows`` of ``cache`` (in place) and return their mask."""
    rows = rows.to(mask.device)
    for layer in _layers(cache):
        layer.keys = layer.keys[rows.to(layer.keys.device)]
        layer.values = layer.values[rows.to(layer.values.device)]
    return mask[rows]


def _pad_left(t: torch.Tensor, cols: int) -> torch.Tensor:
    if cols == 0:
        return t
    return torch.cat([t.new_zeros(*t.shape[:2], cols, *t.shape[3:]), t], dim=2)


def join(a: Any, mask_a: Int[torch.Tensor, "a La"], b: Any, mask_b: Int[torch.Tensor, "b Lb"]
         ) -> Int[torch.Tensor, "ab L"]:
    """Append the rows of batch ``b`` to batch ``a`` (``a`` is changed in place; ``b`` is not
    used afterwards) and return the joined mask ``[a + b, max(La, Lb)]``."""
    la, lb = _layers(a), _layers(b)
    if len(la) != len(lb):
        raise ValueError(f"the caches have {len(la)} and {len(lb)} layers")
    L = max(mask_a.shape[1], mask_b.shape[1])
    for x, y in zip(la, lb):
        if getattr(x, "is_sliding", False) != getattr(y, "is_sliding", False):
            raise ValueError("the caches' layer types differ")
        cols = max(x.keys.shape[2], y.keys.shape[2])
        x.keys = torch.cat([_pad_left(x.keys, cols - x.keys.shape[2]), _pad_left(y.keys, cols - y.keys.shape[2])])
        x.values = torch.cat([_pad_left(x.values, cols - x.values.shape[2]),
                              _pad_left(y.values, cols - y.values.shape[2])])
        if hasattr(x, "cumulative_length"):
            x.cumulative_length = L
    pad = lambda m: torch.nn.functional.pad(m, (L - m.shape[1], 0))  # noqa: E731
    return torch.cat([pad(mask_a), pad(mask_b.to(mask_a.device, mask_a.dtype))])


def trim_padding(cache: Any, mask: Int[torch.Tensor, "batch L"]) -> Int[torch.Tensor, "batch L2"]:
    """Drop the leading columns that are padding in every row (in place); return the new mask."""
    real = mask.bool().any(0)
    if bool(real.all()) or not bool(real.any()):
        return mask
    k = int(real.float().argmax())  # first column some row uses
    L = mask.shape[1] - k
    for layer in _layers(cache):
        if hasattr(layer, "cumulative_length"):  # sliding window: keeps the last min(L, window - 1)
            layer.cumulative_length = L
            keep = min(L, layer.keys.shape[2])
        else:
            keep = L
        layer.keys, layer.values = layer.keys[:, :, -keep:], layer.values[:, :, -keep:]
    return mask[:, k:]
