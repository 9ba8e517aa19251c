"""Issue 14's weight-orthogonalization acceptance on the embedded Gemma 3 270M (sandwich norms, tied
unembedding): baked equals hooked within 1e-4 max |Δlogit| in float32, every write is ⟂ r, the bake
stacks with a ROME edit and reverts bit-exactly. One bake, checked every way (a bake of the
262k-token embedding costs seconds on 2 cores)."""

import time

import pytest
import torch

from editing.covariance import key_statistics, shipped_corpus
from editing.orthogonalization import ablated, orthogonalize
from editing.rome import RomeConfig, edit
from steerlens import data
from steerlens.tokens import encode, pad, pad_id

pytestmark = pytest.mark.gemma

LAYER = 2  # ROME's measured layer (editing.sites.MEASURED_LAYERS); same statistics call as test_editing_gemma
PROMPTS = ["The Eiffel Tower is located in the city of", "I went to the store and bought",
           "Water boils at a temperature of"]
HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # steadier on 2 shared cores (see test_editing_gemma.py)
    yield
    torch.set_num_threads(n)


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(ids, attention_mask=mask).float()


def test_bake_equals_hooks_writes_are_orthogonal_stacks_with_rome_and_reverts(gemma):
    hf = gemma.original_model
    assert hf.lm_head.weight is hf.model.embed_tokens.weight  # the tie this test must keep
    saved = {n: p.detach().clone() for n, p in hf.named_parameters()}
    embed = next(n for n, p in hf.named_parameters() if p is hf.model.embed_tokens.weight)
    stats = key_statistics(gemma, LAYER, corpus=shipped_corpus(), n_tokens=20_000, progress=False)
    request = data.round_robin(data.load("facts"), 1)[0]
    ids, mask = pad([encode(gemma, p) for p in PROMPTS], pad_id(gemma))
    real = mask.bool()
    r = torch.randn(int(gemma.cfg.d_model), generator=torch.Generator().manual_seed(0))
    u = r / r.norm()

    base = _logits(gemma, ids, mask)
    with ablated(gemma, r):
        hooked = _logits(gemma, ids, mask)
    with ablated(gemma, r, naive=True):
        naive = _logits(gemma, ids, mask)
    t = time.perf_counter()
    handle = orthogonalize(gemma, r)
    seconds = {"bake": time.perf_counter() - t}
    try:
        assert hf.lm_head.weight is not hf.model.embed_tokens.weight
        torch.testing.assert_close(hf.lm_head.weight, saved[embed], atol=0, rtol=0)
        baked = _logits(gemma, ids, mask)
        names = [f"blocks.{L}.{h}" for L in range(gemma.cfg.n_layers) for h in HOOKS] + ["hook_embed"]
        with torch.no_grad():
            _, cache = gemma.run_with_cache(ids, attention_mask=mask, names_filter=names)
        worst = {}
        for name in names:
            x = cache[name][real].float()
            worst[name] = float(((x @ u).abs() / x.norm(dim=-1).clamp_min(1e-6)).max())
        t = time.perf_counter()
        # the weights' bookkeeping is under test, not the edit's quality: a short optimisation
        config = RomeConfig(n_prefixes=3, n_value_prefixes=1, steps=2)
        rome = edit(gemma, request, layer=LAYER, stats=stats, config=config, progress=False)
        assert not torch.equal(rome.weight, rome._before)
        seconds["rome"] = time.perf_counter() - t
        rome.revert()
    finally:
        t = time.perf_counter()
        handle.revert()
        seconds["revert"] = time.perf_counter() - t
    gap = float((baked - hooked)[real].abs().max())
    far = {"naive": float((baked - naive)[real].abs().max()), "base": float((baked - base)[real].abs().max()),
           "naive_vs_base": float((naive - base)[real].abs().max())}
    print(f"\nmax |Δlogit| baked vs ablated(): {gap:.3g}; baked vs ablated(naive=True): {far['naive']:.3g}; "
          f"baked vs none: {far['base']:.3g}; naive vs none: {far['naive_vs_base']:.3g}")
    print("seconds:", {k: round(v, 1) for k, v in seconds.items()})
    print(f"largest |x·r̂|/‖x‖ over the stream after the bake: {max(worst.values()):.3g} ({max(worst, key=worst.get)})")
    now = dict(hf.named_parameters())
    bad = [n for n, p in saved.items() if not torch.equal(now[n], p)]
    if bad:  # leave the session's model as it was for the next tests, then fail
        for n in bad:
            now[n].data.copy_(saved[n])
    assert not bad, f"not restored bit-exactly: {bad[:5]}"
    assert hf.lm_head.weight is hf.model.embed_tokens.weight  # re-tied
    assert gap <= 1e-4
    assert far["base"] > 1.0  # the ablation changes the model
    assert max(worst.values()) <= 1e-5  # unablated residuals: |x·r̂|/‖x‖ ~ 1/√640 ≈ 0.04
