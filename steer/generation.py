"""``steer.generate``: batched generation under steering, one vector, coefficient and seed per row."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch

from steer.steering import Steering
from steer.inputs import Coeff, Layers, Positions, Sites, VectorLike, plan, slice_rows
from steer.operators import Op

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def generate(model: "TransformerBridge", prompts: str | Sequence[str], vector: VectorLike | None = None, *,
             coeff: Coeff = None, layers: Layers = None, op: Op = "add", positions: Positions = "all",
             sites: Sites = None, max_new_tokens: int = 20, do_sample: bool = False, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop_at_eos: bool = True, use_past_kv_cache: bool = True, batch_size: int | None = None,
             force: bool = False, return_tokens: bool = False) -> Any:
    """Generate continuations of ``prompts`` (left-padded, with an explicit attention mask) under
    steering (see ``steer.apply`` for the steering arguments; ``vector=None`` generates unsteered).

    Greedy by default. ``do_sample=True`` samples; with ``seed``, prompt ``i`` draws from its own
    ``torch.Generator`` seeded ``seed + i``, so its text does not depend on ``batch_size``, on the
    other prompts or on other threads, and the global RNG is untouched. Returns the continuation
    text per prompt (a str for a str prompt), cut at the first EOS, or with ``return_tokens`` the
    continuation token ids.
    """
    from steerlens.generation import check_length, check_sampling, generate_tokens
    from steerlens.tokens import check_prompts, tokenize

    single = isinstance(prompts, str)
    prompts = check_prompts(prompts)
    n = len(prompts)
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"batch_size must be None or an int >= 1, got {batch_size!r}")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63 - len(prompts)):
        raise ValueError(f"seed must be None or an int in [0, 2**63 - n_prompts), got {seed!r}")
    check_sampling(temperature, top_k, top_p)
    if vector is not None:  # check every argument once, for all rows, before any generation
        plan(model, vector, coeff=coeff, layers=layers, op=op, positions=positions, sites=sites, force=force)
        slice_rows(vector, coeff, positions, slice(0, n), n)
    size = batch_size or n
    stops = stop_ids(model) if stop_at_eos else set()
    out: list[list[int]] = []
    for start in range(0, n, size):
        sl = slice(start, min(n, start + size))
        ids, mask, lengths = tokenize(model, prompts[sl], padding_side="left")
        longest = int(lengths.argmax())
        check_length(model, int(lengths.max()), max_new_tokens, what=f"prompt {start + longest}")
        v, c, pos = slice_rows(vector, coeff, positions, sl, n) if vector is not None else (None, None, None)
        if v is None or (isinstance(v, list) and all(r is None for r in v)):
            ctx: Any = nullcontext()  # no row of this batch is steered
        else:
            ctx = Steering(model, v, coeff=c, layers=layers, op=op, positions=pos, sites=sites, force=force)
        gens = None
        if do_sample and seed is not None:
            gens = [torch.Generator(device="cpu").manual_seed(seed + i) for i in range(sl.start, sl.stop)]
        with ctx:
            tokens = generate_tokens(model, ids, mask, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                     temperature=temperature, top_k=top_k, top_p=top_p, generators=gens,
                                     stop_ids=stops, use_cache=use_past_kv_cache)
        for row in tokens.tolist():
            cut = next((i for i, t in enumerate(row) if t in stops), len(row))
            out.append(row[:cut])
    if not return_tokens:
        out = [model.tokenizer.decode(t, skip_special_tokens=True) for t in out]
    return out[0] if single else out


def stop_ids(model: "TransformerBridge") -> set[int]:
    """The model's EOS token ids."""
    eos = getattr(model.cfg, "eos_token_id", None)
    if eos is None and model.tokenizer is not None:
        eos = model.tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(e) for e in eos}
