"""Tokenization with explicit padding, context-length checks, and substring -> token spans."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from jaxtyping import Int

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompts[{i}] is {type(p).__name__}, expected str")
        if not p:
            raise ValueError(f"prompts[{i}] is an empty string")
    return prompts


def context_length(model: "TransformerBridge") -> int:
    return int(model.cfg.n_ctx)


def tokenize(
    model: "TransformerBridge", prompts: Sequence[str], *, padding_side: str = "right"
) -> tuple[Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"], Int[torch.Tensor, " batch"]]:
    """Tokenize with the model's tokenizer (BOS as it is configured) and pad on ``padding_side``
    whatever the tokenizer's own setting. Returns ``(input_ids, attention_mask, lengths)``.

    Right padding keeps positions exact for absolute-position models: real tokens never see a pad.
    Raises ``ValueError`` for a prompt longer than the model's context.
    """
    prompts = check_prompts(prompts)
    ids = [encode(model, p) for p in prompts]
    n_ctx = context_length(model)
    for i, row in enumerate(ids):
        if len(row) > n_ctx:
            raise ValueError(
                f"prompts[{i}] is {len(row)} tokens, longer than the model's context of {n_ctx}"
            )
    input_ids, mask = pad(ids, pad_id(model), side=padding_side)
    return input_ids, mask, mask.sum(-1)


def encode(model: "TransformerBridge", text: str) -> list[int]:
    """Token ids of ``text`` as ``tokenize`` makes them (BOS as the tokenizer is configured)."""
    return list(model.tokenizer(text)["input_ids"])


def pad_id(model: "TransformerBridge") -> int:
    """The id padding columns get (the tokenizer's pad token, else EOS, else 0)."""
    tok = model.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)


def pad(rows: Sequence[Sequence[int]], pad_id: int, *, side: str = "right") -> tuple[
        Int[torch.Tensor, "batch pos"], Int[torch.Tensor, "batch pos"]]:
    """Pad token rows on ``side`` (``"right"`` or ``"left"``): ``(input_ids, attention_mask)``."""
    if side not in ("right", "left"):
        raise ValueError(f"padding side must be 'right' or 'left', got {side!r}")
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        sl = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        input_ids[i, sl] = torch.tensor(list(row), dtype=torch.long)
        mask[i, sl] = 1
    return input_ids, mask


def token_span(model: "TransformerBridge", prompt: str, substring: str, *, occurrence: int = -1) -> tuple[int, int]:
    """Token indices ``(start, end)`` (end exclusive) of the tokens covering ``substring`` in
    ``prompt``, as ``tokenize`` numbers them (BOS included). ``occurrence`` picks which match
    (default: the last)."""
    if not substring:
        raise ValueError("substring is empty")
    starts = [i for i in range(len(prompt)) if prompt.startswith(substring, i)]
    if not starts:
        raise ValueError(f"{substring!r} does not occur in the prompt {prompt!r}")
    try:
        c0 = starts[occurrence]
    except IndexError:
        raise ValueError(f"{substring!r} occurs {len(starts)} times; occurrence={occurrence}") from None
    c1 = c0 + len(substring)
    enc = model.tokenizer(prompt, return_offsets_mapping=True)
    covering = [
        i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < c1 and b > c0
    ]
    if not covering:
        raise ValueError(f"no token covers {substring!r} in {prompt!r}")
    return covering[0], covering[-1] + 1
