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
    tok = model.tokenizer
    ids = [tok(p)["input_ids"] for p in prompts]
    n_ctx = context_length(model)
    for i, row in enumerate(ids):
        if len(row) > n_ctx:
            raise ValueError(
                f"prompts[{i}] is {len(row)} tokens, longer than the model's context of {n_ctx}"
            )
    lengths = torch.tensor([len(r) for r in ids])
    width = int(lengths.max())
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        sl = slice(0, len(row)) if padding_side == "right" else slice(width - len(row), width)
        input_ids[i, sl] = torch.tensor(row)
        mask[i, sl] = 1
    return input_ids, mask, lengths


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
