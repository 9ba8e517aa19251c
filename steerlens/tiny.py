"""A tiny, real HF GPT-2 with a byte-level tokenizer, built offline from a seed, for tests and docs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from steerlens.io import atomic_path
from steerlens.models import cache_dir

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

_SPECIAL = "<|endoftext|>"


def tiny_model(
    n_layers: int = 2,
    d_model: int = 64,
    seed: int = 0,
    *,
    n_heads: int = 4,
    n_ctx: int = 256,
    dtype: torch.dtype = torch.float32,
) -> "TransformerBridge":
    """A random-init GPT-2 (``n_layers`` blocks, width ``d_model``, 257-token byte vocabulary).

    The same arguments give the same weights. The checkpoint is saved once under the cache and
    booted from there (transformer-lens reloads the tokenizer by path). The caller's global RNG
    state is left as it was, whether or not the checkpoint was cached.
    """
    from transformer_lens.model_bridge import TransformerBridge

    if d_model % n_heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
    key = f"tiny-gpt2-L{n_layers}-d{d_model}-h{n_heads}-c{n_ctx}-s{seed}"
    path = cache_dir() / "tiny" / key
    with torch.random.fork_rng(devices=[]):  # building and booting both draw from the CPU RNG
        if not path.is_dir():
            _build(path, n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_ctx=n_ctx, seed=seed)
        model = TransformerBridge.boot_transformers(str(path), device="cpu", dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    model.cfg.model_name = key
    return model


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges: one token per UTF-8 byte, plus ``<|endoftext|>``
    (id 256) as BOS, EOS and padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = dict(_BYTE_ORDER)  # token id = the byte it encodes
    vocab[_SPECIAL] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([_SPECIAL])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=_SPECIAL, eos_token=_SPECIAL, pad_token=_SPECIAL
    )


def _gpt2_byte_order() -> dict[str, int]:
    # GPT-2's printable remapping of the 256 bytes (the same table ByteLevel uses).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTE_ORDER = _gpt2_byte_order()


def _build(path: Path, *, n_layers: int, d_model: int, n_heads: int, n_ctx: int, seed: int) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = byte_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=n_ctx, n_embd=d_model, n_layer=n_layers,
        n_head=n_heads, bos_token_id=256, eos_token_id=256, pad_token_id=256,
        architectures=["GPT2LMHeadModel"],
    )
    torch.manual_seed(seed)  # inside tiny_model's fork_rng: the caller's RNG is untouched
    model = GPT2LMHeadModel(config)
    with atomic_path(path, directory=True, keep_existing=True) as tmp:  # a concurrent build may win
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
