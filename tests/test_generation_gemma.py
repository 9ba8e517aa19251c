"""On the embedded Gemma 3 270M: greedy KV-cached generation equals generation without the cache,
token for token, and is not degenerate (transformers 5.24 under transformer-lens 4.3 silently lost
the cache and produced "bought by any which which which ..."); transformer-lens' own
``generate`` agrees on the tested stack."""

import pytest
import torch

import steer

pytestmark = pytest.mark.gemma

PROMPTS = ["I went to the store and", "The Eiffel Tower is located in the city of", "My favourite food is"]
NEW = 24


def _degenerate(tokens: list[int]) -> bool:
    """Mostly one token, or a token repeated 4+ times in a row."""
    runs = any(tokens[i] == tokens[i + 1] == tokens[i + 2] == tokens[i + 3] for i in range(len(tokens) - 3))
    return runs or len(set(tokens)) < len(tokens) / 3


def test_kv_cache_equals_no_cache_and_text_is_coherent(gemma):
    kw = dict(max_new_tokens=NEW, stop_at_eos=False, return_tokens=True)
    cached = steer.generate(gemma, PROMPTS, use_past_kv_cache=True, **kw)
    recomputed = steer.generate(gemma, PROMPTS, use_past_kv_cache=False, **kw)
    assert cached == recomputed
    assert all(len(t) == NEW and not _degenerate(t) for t in cached)
    text = gemma.tokenizer.decode(cached[1])
    assert "Paris" in text
    # transformer-lens' generate (what users call inside steer.apply) gives the same greedy tokens
    ids = gemma.tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        tl = gemma.generate(ids, max_new_tokens=NEW, do_sample=False, verbose=False, stop_at_eos=False,
                            use_past_kv_cache=True, return_type="tokens")
    assert tl[0, ids.shape[1]:].tolist() == cached[0]
