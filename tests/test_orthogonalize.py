"""Weight orthogonalization and run-time directional ablation (editing.orthogonalization) on tiny
random models: GPT-2 (Conv1D, biases, positional embedding, tied unembedding), Llama (Linear, no
post-norms) and Gemma 3 (sandwich post-norms with random gains)."""

import threading

import numpy as np
import pytest
import torch

import editing
from editing import sites
from editing.covariance import key_statistics
from editing.orthogonalization import _gain, ablated, orthogonalize, orthogonalized, write_directions
from editing.rome import _LIVE, RomeConfig, as_request, edit
from steer.vector import SteeringVector
from steerlens.hooks import count_hooks
from steerlens.tokens import encode, pad, pad_id

FAST = RomeConfig(n_prefixes=3, prefix_tokens=4, n_value_prefixes=2, steps=4, n_tokens=400)
CORPUS = ["the quick brown fox jumps over the lazy dog", "a stitch in time saves nine stitches",
          "Bob lives in the city of Paris and works in a bakery", "many hands make light work"] * 4
REQ = as_request(id="bob", prompt="Bob lives in the city of", subject="Bob", target_true=" Paris", target_new=" Rome")
PROMPTS = ["Bob lives in the city of", "a stitch", "many hands make light work, they say"]
MODELS = ["tiny", "tiny_llama", "tiny_gemma3"]


def _boot(path, hf_model, model_name, dtype=torch.float32):
    from transformer_lens.model_bridge import TransformerBridge

    from steerlens.tiny import byte_tokenizer

    if hf_model is not None:
        hf_model.save_pretrained(path)
        byte_tokenizer().save_pretrained(path)
    model = TransformerBridge.boot_transformers(str(path), device="cpu", dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    model.cfg.model_name = model_name
    model("warm up")
    return model


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A 2-block random Llama: Linear writes, no post-norms, untied unembedding."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=257, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=256, eos_token_id=256, pad_token_id=256, architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    return _boot(tmp_path_factory.mktemp("tiny-llama"), LlamaForCausalLM(cfg), "tiny-llama")


@pytest.fixture(scope="module")
def tiny_gemma3_dir(tmp_path_factory):
    """A saved 2-block random Gemma 3: sandwich norms (random gains, so g ⊙ r differs from r),
    scaled embedding, tied unembedding."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from steerlens.tiny import byte_tokenizer

    cfg = Gemma3TextConfig(vocab_size=257, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                           bos_token_id=256, eos_token_id=256, pad_token_id=256, sliding_window=16,
                           layer_types=["sliding_attention", "full_attention"], architectures=["Gemma3ForCausalLM"])
    torch.manual_seed(0)
    hf = Gemma3ForCausalLM(cfg)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.5)
    path = tmp_path_factory.mktemp("tiny-gemma3")
    hf.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_gemma3(tiny_gemma3_dir):
    return _boot(tiny_gemma3_dir, None, "tiny-gemma3")


def _batch(model):
    ids, mask = pad([encode(model, p) for p in PROMPTS], pad_id(model))
    return ids, mask


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(ids, attention_mask=mask)


def _params(model):
    return {n: p.detach().clone() for n, p in model.original_model.named_parameters(remove_duplicate=False)}


def _restored(model, saved):
    now = dict(model.original_model.named_parameters(remove_duplicate=False))
    return now.keys() == saved.keys() and all(torch.equal(now[n], p) for n, p in saved.items())


def _tied(model):
    head = model.unembed.original_component.weight
    return head is model.embed.original_component.weight


def _r(model, seed=1):
    return torch.randn(int(model.cfg.d_model), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("which", MODELS)
def test_bake_equals_hooks_and_reverts_bit_exactly(which, request):
    model = request.getfixturevalue(which)
    saved, tied, hooks = _params(model), _tied(model), count_hooks(model)
    booked = [id(p) for p in model.original_model.parameters() if hasattr(p, _LIVE)]  # other tests' live ROME edits
    ids, mask = _batch(model)
    r = _r(model)
    base = _logits(model, ids, mask)
    with ablated(model, r) as dirs:
        hooked = _logits(model, ids, mask)
    assert count_hooks(model) == hooks
    assert len(dirs) == 1 + 2 * model.cfg.n_layers + ("pos_embed" in dict(model.named_children()))
    h = orthogonalize(model, r)
    try:
        assert _tied(model) is False  # the unembedding keeps its own (original) weights while baked
        baked = _logits(model, ids, mask)
    finally:
        h.revert()
    real = mask.bool()
    assert (baked - base)[real].abs().max() > 1e-2  # the ablation does something
    assert (baked - hooked)[real].abs().max() <= 1e-5
    assert _restored(model, saved) and _tied(model) is tied
    assert [id(p) for p in model.original_model.parameters() if hasattr(p, _LIVE)] == booked  # no bookkeeping left
    with pytest.raises(ValueError, match="already reverted"):
        h.revert()


@pytest.mark.parametrize("which", MODELS)
def test_after_the_bake_no_residual_carries_the_direction(which, request):
    model = request.getfixturevalue(which)
    ids, mask = _batch(model)
    r = _r(model, seed=2)
    u = r / r.norm()
    names = [f"blocks.{L}.hook_{k}" for L in range(model.cfg.n_layers)
             for k in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")]
    with orthogonalized(model, r):
        with torch.no_grad():
            _, cache = model.run_with_cache(ids, attention_mask=mask, names_filter=names)
    for name in names:
        x = cache[name][mask.bool()].float()
        assert (x @ u).abs().max() < 1e-4, name
    # and without the bake the stream does carry it
    _, cache = model.run_with_cache(ids, attention_mask=mask, names_filter=names)
    assert max(float((cache[n][mask.bool()].float() @ u).abs().max()) for n in names) > 1e-2


def test_sandwich_norms_project_g_times_r_and_the_naive_ablation_differs(tiny_gemma3, tiny):
    model = tiny_gemma3
    r = _r(model)
    u = r / r.norm()
    dirs = write_directions(model, r)
    for L in range(model.cfg.n_layers):
        for post in ("ln1_post", "ln2_post"):
            norm = getattr(model.blocks[L], post).original_component
            g = 1.0 + norm.weight.float()  # HF Gemma3RMSNorm: (1 + w) ⊙ y / rms(y)
            torch.testing.assert_close(dirs[f"blocks.{L}.{post}.hook_in"], (g * u) / (g * u).norm())
    torch.testing.assert_close(dirs["hook_embed"], u)
    ids, mask = _batch(model)
    with ablated(model, r):
        exact = _logits(model, ids, mask)
    with ablated(model, r, naive=True) as naive_dirs:
        naive = _logits(model, ids, mask)
    assert set(naive_dirs) == {"hook_embed"} | {f"blocks.{L}.hook_{k}_out" for L in range(2) for k in ("attn", "mlp")}
    assert (exact - naive)[mask.bool()].abs().max() > 1e-3
    # on a model without post-norms the two are the same intervention
    ids, mask = _batch(tiny)
    with ablated(tiny, _r(tiny)):
        a = _logits(tiny, ids, mask)
    with ablated(tiny, _r(tiny), naive=True):
        b = _logits(tiny, ids, mask)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_gain_refuses_a_layernorm():
    with pytest.raises(TypeError, match="neither"):
        _gain(torch.nn.LayerNorm(8), "blocks.0.ln1_post.hook_in")


@pytest.fixture(scope="module")
def tiny_stats(tiny):
    return key_statistics(tiny, 1, corpus=CORPUS, n_tokens=400, cache=False, progress=False)


@pytest.mark.parametrize("order", ["bake_then_rome", "rome_then_bake"])
def test_stacks_with_rome_and_reverts_bit_exactly_in_reverse_order(tiny, tiny_stats, order):
    saved = _params(tiny)
    r = _r(tiny, seed=3)
    first, second = ((lambda: orthogonalize(tiny, r)), (lambda: edit(tiny, REQ, layer=1, stats=tiny_stats, config=FAST,
                                                                        progress=False)))
    if order == "rome_then_bake":
        first, second = second, first
    a = first()
    mid = _params(tiny)
    b = second()
    assert not torch.equal(sites.down_proj(tiny, 1)[0], mid["transformer.h.1.mlp.out._original_component.weight"])
    b.revert()
    assert _restored(tiny, mid)
    a.revert()
    assert _restored(tiny, saved) and _tied(tiny)


def test_out_of_order_reverts_restore_within_rounding(tiny, tiny_stats):
    saved = _params(tiny)
    bake = orthogonalize(tiny, _r(tiny, seed=4))
    rome = edit(tiny, REQ, layer=1, stats=tiny_stats, config=FAST, progress=False)
    other = orthogonalize(tiny, _r(tiny, seed=5))
    try:
        bake.revert()  # not the last change of these weights: subtracts its own ΔW
        assert not _tied(tiny)  # another bake is still live: the unembedding stays apart
        rome.revert()
        other.revert()
        assert _tied(tiny)
        now = dict(tiny.original_model.named_parameters(remove_duplicate=False))
        assert max(float((now[n] - p).abs().max()) for n, p in saved.items()) <= 1e-6
    finally:
        for name, p in tiny.original_model.named_parameters(remove_duplicate=False):
            p.data.copy_(saved[name])  # leave the session's model exactly as it was


def test_revert_refuses_when_the_weights_were_restored_another_way(tiny):
    saved = _params(tiny)
    h = orthogonalize(tiny, _r(tiny))
    W = sites.down_proj(tiny, 0)[0]
    W.data.copy_(saved["transformer.h.0.mlp.out._original_component.weight"])
    try:
        before = _params(tiny)
        with pytest.raises(ValueError, match="no longer in the blocks.0.mlp.out.weight weight"):
            h.revert()
        assert _restored(tiny, before) and not h.reverted  # nothing changed, all or nothing
    finally:
        for name, p in tiny.original_model.named_parameters(remove_duplicate=False):
            p.data.copy_(saved[name])
        tiny.unembed.original_component.weight = tiny.embed.original_component.weight
        for p in tiny.original_model.parameters():
            for attr in (_LIVE, "_steerlens_rome_nlive"):
                if hasattr(p, attr):
                    delattr(p, attr)
        delattr(tiny.original_model, "_steerlens_orth_untied")
    assert _restored(tiny, saved) and _tied(tiny)


def test_context_managers_clean_up_on_errors(tiny):
    saved, hooks = _params(tiny), count_hooks(tiny)
    with pytest.raises(RuntimeError, match="boom"):
        with orthogonalized(tiny, _r(tiny)):
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        with ablated(tiny, _r(tiny)):
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        with orthogonalize(tiny, _r(tiny)):
            raise RuntimeError("boom")
    assert _restored(tiny, saved) and _tied(tiny) and count_hooks(tiny) == hooks


def test_bake_is_refused_while_another_thread_steers(tiny):
    saved = _params(tiny)
    inside, leave = threading.Event(), threading.Event()

    def steer():
        with ablated(tiny, _r(tiny)):
            tiny("hello")
            inside.set()
            leave.wait(30)

    t = threading.Thread(target=steer)
    t.start()
    try:
        assert inside.wait(30)
        with pytest.raises(RuntimeError, match="weight orthogonalization"):
            orthogonalize(tiny, _r(tiny))
    finally:
        leave.set()
        t.join()
    assert _restored(tiny, saved)


def test_directions_from_a_probe_a_vector_and_an_array(tiny):
    from probes import MeanDiffProbe

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 64)).astype(np.float32)
    y = np.array([0, 1] * 20)
    X[y == 1] += 0.5
    probe = MeanDiffProbe().fit(X, y)
    u = probe.direction / probe.direction.norm()
    torch.testing.assert_close(write_directions(tiny, probe)["hook_embed"], u)
    vec = SteeringVector({0: 3 * u, 2: torch.ones(64)})
    torch.testing.assert_close(write_directions(tiny, vec, layer=0)["hook_embed"], u)
    torch.testing.assert_close(write_directions(tiny, (2 * u).numpy())["hook_embed"], u)
    torch.testing.assert_close(write_directions(tiny, SteeringVector({1: u}))["blocks.0.hook_mlp_out"], u)
    with editing.orthogonalized(tiny, probe) as h:  # the package names
        torch.testing.assert_close(h.direction, u)
        assert "embed.weight" in h.weights and "blocks.2.mlp.out.bias" in h.weights


@pytest.mark.parametrize("direction,kwargs,exc,match", [
    (torch.zeros(64), {}, ValueError, "direction is the zero vector"),
    (torch.ones(63), {}, ValueError, r"direction has shape \(63,\); .*d_model = 64"),
    (torch.ones(2, 64), {}, ValueError, r"direction has shape \(2, 64\)"),
    (torch.tensor([float("nan")] * 64), {}, ValueError, "direction holds NaN"),
    (SteeringVector({0: torch.ones(64), 1: torch.ones(64)}), {}, ValueError,
     r"direction: the SteeringVector has one direction per layer \(\[0, 1\]\); pass layer="),
    (SteeringVector({0: torch.ones(64)}), {"layer": 2}, ValueError, r"layer=2: the SteeringVector has layers \[0\]"),
    (torch.ones(64), {"layer": 0}, ValueError, "layer=0 chooses a layer of a SteeringVector"),
    ("truth", {}, TypeError, "direction must be a SteeringVector, a fitted probe, or a tensor"),
])
def test_bad_input_is_refused_and_changes_nothing(tiny, direction, kwargs, exc, match):
    saved, hooks = _params(tiny), count_hooks(tiny)
    with pytest.raises(exc, match=match):
        orthogonalize(tiny, direction, **kwargs)
    with pytest.raises(exc, match=match):
        with ablated(tiny, direction, **kwargs):
            pass
    assert _restored(tiny, saved) and _tied(tiny) and count_hooks(tiny) == hooks


@pytest.mark.parametrize("which", ["tiny", "tiny_gemma3"])
def test_generation_with_the_kv_cache_matches_the_bake(which, request):
    """The run-time ablation acts at every decoding step (one new column per call, KV cache)."""
    from steer.generation import generate
    from steerlens.steps import intervene

    model = request.getfixturevalue(which)
    r = _r(model, seed=6)
    u = r / r.norm()
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    decode = []  # max |x·r̂| of the last residual at each decoding step (cached calls)

    def watch(x, step):
        if step is not None and step.past > 0:
            decode.append(float((x[step.real].float() @ u.to(x.device)).abs().max()))

    kw = dict(max_new_tokens=6, stop_at_eos=False, return_tokens=True)
    with ablated(model, r), intervene(model, {last: watch}):
        hooked = generate(model, PROMPTS, **kw)
    with orthogonalized(model, r):
        baked = generate(model, PROMPTS, **kw)
    assert [list(map(int, t)) for t in hooked] == [list(map(int, t)) for t in baked]
    assert len(decode) == kw["max_new_tokens"] - 1 and max(decode) < 1e-4


def test_bf16_sandwich_model_bakes_in_float32_and_reverts_bit_exactly(tiny_gemma3_dir):
    model = _boot(tiny_gemma3_dir, None, "tiny-gemma3-bf16", dtype=torch.bfloat16)
    saved = _params(model)
    r = _r(model, seed=7)
    u = r / r.norm()
    ids, mask = _batch(model)
    names = [f"blocks.{L}.hook_resid_post" for L in range(model.cfg.n_layers)]
    with ablated(model, r):
        _, hooked = model.run_with_cache(ids, attention_mask=mask, names_filter=names)
    with orthogonalized(model, r) as h:
        assert all(p.dtype == torch.bfloat16 for p in model.original_model.parameters())
        _, baked = model.run_with_cache(ids, attention_mask=mask, names_filter=names)
    assert h.reverted and _restored(model, saved) and _tied(model)
    for cache in (hooked, baked):
        for name in names:
            x = cache[name][mask.bool()].float()
            assert ((x @ u).abs() / x.norm(dim=-1).clamp_min(1e-6)).max() < 2e-2, name  # bf16 rounding; unablated ~0.1
