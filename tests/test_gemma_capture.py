"""Capture on the embedded Gemma 3 270M (its tokenizer pads on the left by default)."""

import pytest
import torch

import steerlens
from steerlens.hooks import count_hooks

pytestmark = pytest.mark.gemma

PROMPTS = [
    "The capital of France is Paris.",
    "Two plus two is five.",
    "A dolphin is a mammal that lives in the sea and eats fish.",
    "Hi",
]


def test_batched_equals_solo_on_gemma(gemma):
    assert gemma.tokenizer.padding_side == "left"
    for pool in ("last", "mean"):
        kw = dict(layers=[3, 9, 17], pool=pool, progress=False)
        acts = steerlens.capture(gemma, PROMPTS, "resid_post", batch_size=4, **kw)
        solos = [steerlens.capture(gemma, [p], "resid_post", **kw) for p in PROMPTS]
        for h in acts.hooks:
            solo = torch.cat([s[h] for s in solos])
            # Gemma's residual norms reach 1e4-1e5: compare relative to the row norm
            err = (acts[h] - solo).norm(dim=-1) / solo.norm(dim=-1)
            assert err.max() < 1e-5, (h, pool, err)


def test_gemma_capture_stops_early_and_leaves_no_hooks(gemma):
    before = count_hooks(gemma)
    fired = []
    with gemma.hooks(fwd_hooks=[("blocks.7.hook_resid_pre", lambda x, hook: fired.append(1))]):
        acts = steerlens.capture(gemma, PROMPTS, ["resid_post", "mlp_post"], layers=[6], progress=False)
    assert fired == [] and count_hooks(gemma) == before
    assert acts["blocks.6.hook_resid_post"].shape == (4, 640)
    assert acts["blocks.6.mlp.hook_post"].shape == (4, gemma.cfg.d_mlp)


def test_subject_span_pooling(gemma):
    prompt = "The Eiffel Tower is located in the city of"
    span = steerlens.token_span(gemma, prompt, "Eiffel Tower")
    h = "blocks.4.mlp.hook_post"
    a = steerlens.capture(gemma, [prompt, prompt], h, pool=[span[1] - 1, span], progress=False)
    b = steerlens.capture(gemma, [prompt], h, pool="all", progress=False).tokens(h, 0)
    torch.testing.assert_close(a[h][0], b[span[1] - 1])
    torch.testing.assert_close(a[h][1], b[span[0] : span[1]].mean(0))
