"""One decoding loop: KV-cached (or recomputed) greedy or sampled generation on the HF model
under the bridge, so every hook and intervention fires, with one ``torch.Generator`` per row.

It calls the HF model directly rather than ``TransformerBridge.generate``: that keeps no state on
the model (two threads may generate at once), computes logits only for the last position (the
262k-wide unembedding dominates on Gemma), and lets each row draw from its own generator, so a
seeded row gives the same tokens alone or in any batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def check_length(model: "TransformerBridge", prompt_tokens: int, max_new_tokens: int, *, what: str = "prompt") -> None:
    """Refuse a ``prompt_tokens + max_new_tokens`` that does not fit the model's context."""
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool):
        raise TypeError(f"max_new_tokens must be an int, got {max_new_tokens!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    n_ctx = int(model.cfg.n_ctx)
    if prompt_tokens + max_new_tokens > n_ctx:
        raise ValueError(f"the {what} is {prompt_tokens} tokens and max_new_tokens={max_new_tokens}: "
                         f"{prompt_tokens + max_new_tokens} tokens do not fit the model's context of {n_ctx}")


def categorical(probs: Float[torch.Tensor, "n vocab"], generator: torch.Generator | None,
                block: int = 512) -> Int[torch.Tensor, "n 1"]:
    """One draw per row of ``probs``, in two exact stages: a block of ``block`` columns by its
    mass, then a column within it. ``torch.multinomial`` alone is serial per row: on Gemma's 262k
    vocabulary it took longer than the forward pass (1.5 s vs 1.2 s for 256 rows on 2 CPU cores;
    this takes 0.1 s)."""
    n, V = probs.shape
    if V % block:
        probs = torch.nn.functional.pad(probs, (0, block - V % block))
    p = probs.view(n, -1, block)
    b = torch.multinomial(p.sum(-1), 1, generator=generator)
    j = torch.multinomial(p[torch.arange(n)[:, None], b].squeeze(1), 1, generator=generator)
    return b * block + j


def next_tokens(logits: Float[torch.Tensor, "batch vocab"], *, do_sample: bool, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None,
                generators: Sequence[torch.Generator | None] | torch.Generator | None = None,
                ) -> Int[torch.Tensor, " batch"]:
    """Greedy (argmax) or sampled next tokens. ``generators``: one per row (each row draws from its
    own: the same tokens alone or in any batch), one ``torch.Generator`` for the whole batch, or
    ``None`` (the global RNG)."""
    logits = logits.float()
    if not do_sample:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(-1).cpu()
    if generators is None or isinstance(generators, torch.Generator):
        return categorical(probs, generators)[:, 0].to(logits.device)
    gens = list(generators)
    return torch.cat([categorical(probs[r : r + 1], gens[r]) for r in range(len(probs))])[:, 0].to(logits.device)


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Refuse sampling parameters outside their ranges."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")


@torch.inference_mode()
def generate_tokens(
    model: "TransformerBridge",
    ids: Int[torch.Tensor, "batch prompt"],
    mask: Int[torch.Tensor, "batch prompt"],
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generators: Sequence[torch.Generator | None] | torch.Generator | None = None,
    stop_ids: set[int] | frozenset[int] = frozenset(),
    use_cache: bool = True,
) -> Int[torch.Tensor, "batch new"]:
    """Continue left-padded ``ids`` (``mask`` marks real tokens) by up to ``max_new_tokens``.

    Stops early once every row has produced one of ``stop_ids``; a finished row keeps receiving
    its stop token. Raises ``ValueError`` when the logits stop being finite (an intervention
    overflowed the model's activations).
    """
    from transformers import DynamicCache

    from steerlens.steps import intervene

    check_length(model, int(ids.shape[1]), max_new_tokens)
    check_sampling(temperature, top_k, top_p)
    if generators is not None and not isinstance(generators, torch.Generator) and len(generators) != ids.shape[0]:
        raise ValueError(f"{len(generators)} generators for {ids.shape[0]} rows")
    hf = model.original_model
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device).long()
    cache = DynamicCache(config=hf.config) if use_cache else None
    stops = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
    sampling = dict(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, generators=generators)
    with intervene(model, {}):  # registers this call as a user of the model (see steps.exclusive)
        return _decode(hf, ids, mask, cache, stops, max_new_tokens, sampling)


def step_logits(hf: torch.nn.Module, feed: Int[torch.Tensor, "batch n"], mask: Int[torch.Tensor, "batch total"],
                cache: Any | None) -> Float[torch.Tensor, "batch vocab"]:
    """One forward call of a decoding loop on the HF model ``hf``: ``feed`` holds the new columns,
    ``mask`` covers cache + feed (left-padded rows), position ids are ``cumsum(mask) - 1``.
    Returns the last position's logits. Raises ``RuntimeError`` when a prefill leaves the KV
    cache empty (a transformers version this stack cannot generate with)."""
    prefill = cache is not None and cache.get_seq_length() == 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    kw = dict(use_cache=True, past_key_values=cache) if cache is not None else dict(use_cache=False)
    out = hf(input_ids=feed, attention_mask=mask, position_ids=pos[:, -feed.shape[1] :], logits_to_keep=1, **kw)
    if prefill and cache.get_seq_length() == 0:
        import transformers

        raise RuntimeError(f"the KV cache was not filled (transformers {transformers.__version__}): "
                           "this stack cannot generate with a cache; install the tested versions "
                           "(constraints.txt) or pass use_past_kv_cache=False")
    return out.logits[:, -1]


def _decode(hf, ids, mask, cache, stops, max_new_tokens: int, sampling: dict) -> torch.Tensor:
    use_cache = cache is not None
    feed, new, done = ids, [], torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for step in range(max_new_tokens):
        logits = step_logits(hf, feed, mask, cache)
        if not torch.isfinite(logits).all():
            raise ValueError(f"the model's logits are not finite at generation step {step}: an intervention "
                             "(e.g. a steering coefficient of this size) overflowed its activations")
        tok = next_tokens(logits, **sampling)
        if len(stops):
            tok = torch.where(done, stops[0], tok)
            done |= torch.isin(tok, stops)
        new.append(tok)
        ids = torch.cat([ids, tok[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(tok)[:, None]], 1)
        feed = tok[:, None] if use_cache else ids
        if len(stops) and bool(done.all()):
            break
    return torch.stack(new, 1)
