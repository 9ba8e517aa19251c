"""Steering during forward passes and generation on the tiny random GPT-2, checked against
independent reference hooks (exact positions, KV cache vs full recompute, per-row batches,
padding, dtypes, hook hygiene, input errors)."""

import pytest
import torch

import steer
import steerlens
from steer.vector import SteeringVector
from steerlens.tokens import tokenize

LAYER = 1
PROMPTS = ["hello there, my friend", "hi", "the cat sat on the", "a b"]


def rand_vec(seed, norm=0.4, layers=(LAYER,), fingerprint=None):
    g = torch.Generator().manual_seed(seed)
    dirs = {}
    for layer in layers:
        v = torch.randn(64, generator=g)
        dirs[layer] = v * norm / v.norm()
    return SteeringVector(dirs, fingerprint=fingerprint)


def no_hooks_left(model) -> bool:
    points = set(model.hook_dict.values())
    return (all(len(hp._forward_hooks) == 0 for hp in points)
            and len(model.original_model._forward_pre_hooks) == 0)


def reference_logits(model, ids, mask, delta, sel, layer=LAYER):
    """Logits with ``x[sel] += delta[row]`` at ``blocks.layer.hook_resid_post``: our own hook,
    independent of steer's position logic. ``delta``: [batch, d]; ``sel``: [batch, seq] bool."""

    def hook(x, hook):
        return x + sel[..., None].to(x.dtype) * delta[:, None, :].to(x.dtype)

    with torch.inference_mode(), model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_resid_post", hook)]):
        return model(ids, attention_mask=mask, return_type="logits")


def test_add_matches_a_manual_hook_exactly(tiny):
    v = rand_vec(0)
    ids, mask, _ = tokenize(tiny, PROMPTS, padding_side="left")
    with torch.inference_mode(), steer.apply(tiny, v, coeff=2.0):
        got = tiny(ids, attention_mask=mask, return_type="logits")
    want = reference_logits(tiny, ids, mask, (2.0 * v[LAYER]).expand(4, -1), mask.bool())
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert no_hooks_left(tiny)


def test_padding_is_never_steered(tiny):
    v = rand_vec(1)
    ids, mask, _ = tokenize(tiny, PROMPTS, padding_side="left")
    seen = {}

    def record(x, hook):
        seen["x"] = x.clone()
        return x

    name = f"blocks.{LAYER}.hook_resid_post"
    with torch.inference_mode():
        with tiny.hooks(fwd_hooks=[(name, record)]):
            tiny(ids, attention_mask=mask)
        plain = seen["x"]
        with steer.apply(tiny, v, coeff=3.0), tiny.hooks(fwd_hooks=[(name, record)]):  # records after steering
            tiny(ids, attention_mask=mask)
    diff = seen["x"] - plain
    pad = ~mask.bool()
    assert pad.any()
    assert diff[pad].abs().max() == 0
    torch.testing.assert_close(diff[mask.bool()], (3.0 * v[LAYER]).expand(int(mask.sum()), -1))


def _sel(kind, full_mask, width, prompt_len):
    cols = torch.arange(full_mask.shape[1])
    real = full_mask.bool()
    if kind == "all":
        return real
    if kind == "prompt":
        return real & (cols < width)
    if kind == "generated":
        return real & (cols >= width)
    tok = full_mask.long().cumsum(-1) - 1
    out = torch.zeros_like(real)
    for r in range(len(real)):
        want = torch.tensor([i if i >= 0 else int(prompt_len[r]) + i for i in kind])
        out[r] = torch.isin(tok[r], want)
    return out & real


@pytest.mark.parametrize("positions", ["all", "prompt", "generated", [0, 2, -1]])
def test_kv_cache_generation_equals_full_recompute(tiny, positions):
    """Cached greedy generation (prefill, then one token per step) under steering equals a manual
    loop that recomputes the whole sequence each step with the intervention at the same
    absolute positions."""
    v = rand_vec(2, norm=0.5)
    coeff, n_new = 1.5, 8
    ids, mask, lengths = tokenize(tiny, PROMPTS, padding_side="left")
    width = ids.shape[1]
    with torch.inference_mode(), steer.apply(tiny, v, coeff=coeff, positions=positions):
        out = tiny.generate(ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False, verbose=False,
                            stop_at_eos=False, use_past_kv_cache=True, output_logits=True)
    assert no_hooks_left(tiny)
    tokens = ids.clone()
    delta = (coeff * v[LAYER]).expand(len(PROMPTS), -1)
    for step in range(n_new):
        full_mask = torch.cat([mask, torch.ones(len(PROMPTS), step, dtype=mask.dtype)], dim=1)
        sel = _sel(positions, full_mask, width, lengths)
        logits = reference_logits(tiny, tokens, full_mask, delta, sel)[:, -1]
        torch.testing.assert_close(out.logits[step], logits, atol=1e-4, rtol=1e-4)
        tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out.sequences, tokens)
    # and steer's own no-cache path (TL's full recompute) agrees
    nocache = steer.generate(tiny, PROMPTS, v, coeff=coeff, positions=positions, max_new_tokens=n_new,
                             use_past_kv_cache=False, stop_at_eos=False, return_tokens=True)
    assert nocache == tokens[:, width:].tolist()


def test_generated_only_leaves_the_prompt_and_first_token_alone(tiny):
    v = rand_vec(3, norm=2.0)
    plain = steer.generate(tiny, PROMPTS, None, max_new_tokens=4, stop_at_eos=False, return_tokens=True)
    gen = steer.generate(tiny, PROMPTS, v, coeff=3.0, positions="generated", max_new_tokens=4,
                         stop_at_eos=False, return_tokens=True)
    assert [r[0] for r in gen] == [r[0] for r in plain]
    assert gen != plain


def test_per_row_vectors_equal_solo_runs(tiny):
    """A left-padded batch with a different vector and coefficient per row (one row unsteered)
    gives each row its solo run's logits and tokens."""
    vs = [rand_vec(10), rand_vec(11, norm=0.8), None, rand_vec(13, norm=0.3)]
    coeffs = [1.0, -2.0, 0.0, 3.0]
    n_new = 6
    ids, mask, lengths = tokenize(tiny, PROMPTS, padding_side="left")
    assert len(set(lengths.tolist())) == 4
    with torch.inference_mode(), steer.apply(tiny, vs, coeff=coeffs):
        batch = tiny.generate(ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False, verbose=False,
                              stop_at_eos=False, output_logits=True)
    for r, prompt in enumerate(PROMPTS):
        sid, smask, _ = tokenize(tiny, [prompt])
        ctx = steer.apply(tiny, vs[r], coeff=coeffs[r]) if vs[r] is not None else torch.inference_mode()
        with torch.inference_mode(), ctx:
            solo = tiny.generate(sid, attention_mask=smask, max_new_tokens=n_new, do_sample=False, verbose=False,
                                 stop_at_eos=False, output_logits=True)
        assert batch.sequences[r, ids.shape[1]:].tolist() == solo.sequences[0, sid.shape[1]:].tolist()
        for step in range(n_new):
            torch.testing.assert_close(batch.logits[step][r], solo.logits[step][0], atol=1e-4, rtol=1e-4)
    # the functional form with a [batch, d] tensor per layer gives the same tokens
    stacked = {LAYER: torch.stack([(v[LAYER] if v is not None else torch.zeros(64)) for v in vs])}
    got = steer.generate(tiny, PROMPTS, stacked, coeff=coeffs, max_new_tokens=n_new, stop_at_eos=False,
                         return_tokens=True)
    assert got == batch.sequences[:, ids.shape[1]:].tolist()
    # and batch_size chunks the rows (vectors and coefficients with them)
    chunked = steer.generate(tiny, PROMPTS, vs, coeff=coeffs, max_new_tokens=n_new, stop_at_eos=False,
                             return_tokens=True, batch_size=3)
    assert chunked == got


def _record_after(model, name):
    seen = {}

    def record(x, hook):
        seen["x"] = x.clone()
        return x

    return seen, model.hooks(fwd_hooks=[(name, record)])


def test_clamp_and_add_norm(tiny):
    v = rand_vec(4)
    u = v[LAYER] / v[LAYER].norm()
    ids, mask, _ = tokenize(tiny, PROMPTS[:1])
    name = f"blocks.{LAYER}.hook_resid_post"
    with torch.inference_mode():
        seen, rec = _record_after(tiny, name)
        with rec:
            tiny(ids)
        plain = seen["x"]
        seen, rec = _record_after(tiny, name)
        with steer.apply(tiny, v, op="clamp", coeff=0.7), rec:
            tiny(ids)
        torch.testing.assert_close(seen["x"] @ u, torch.full(ids.shape, 0.7), atol=1e-5, rtol=0)
        seen, rec = _record_after(tiny, name)
        with steer.apply(tiny, v, op="add_norm", coeff=0.5), rec:
            tiny(ids)
        torch.testing.assert_close(seen["x"] - plain, 0.5 * plain.norm(dim=-1, keepdim=True) * u)


def test_ablation_at_every_site_removes_the_direction_from_the_residual(tiny):
    """Refusal-direction style: ablate at every block's input, attention output and MLP output, so
    the residual stream never holds the direction (checked at the last block's output)."""
    v = rand_vec(5, layers=(0,))
    u = v[0] / v[0].norm()
    ids, _, _ = tokenize(tiny, PROMPTS[:1])
    last = f"blocks.{tiny.cfg.n_layers - 1}.hook_resid_post"
    with torch.inference_mode():
        seen, rec = _record_after(tiny, last)
        with rec:
            tiny(ids)
        assert (seen["x"] @ u).abs().max() > 1e-3
        seen, rec = _record_after(tiny, last)
        with steer.apply(tiny, v, op="ablate", layers="all", sites="all"), rec:
            tiny(ids)
        assert (seen["x"] @ u).abs().max() < 1e-5


def test_single_layer_vector_applies_at_other_layers(tiny):
    v = rand_vec(6)
    ids, _, _ = tokenize(tiny, PROMPTS[:1])
    with torch.inference_mode(), steer.apply(tiny, v, coeff=1.0, layers=[0, 2]):
        got = tiny(ids)
    hooks = [(f"blocks.{layer}.hook_resid_post", lambda x, hook: x + v[LAYER]) for layer in (0, 2)]
    with torch.inference_mode(), tiny.hooks(fwd_hooks=hooks):
        want = tiny(ids)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    two = rand_vec(7, layers=(1, 2))
    with pytest.raises(ValueError, match=r"directions at \[1, 2\] only"):
        steer.apply(tiny, two, layers=[0])


def test_calibrated_coeff_is_the_default(tiny):
    v = rand_vec(8).with_coeff(2.5)
    ids, _, _ = tokenize(tiny, PROMPTS[:1])
    with torch.inference_mode():
        with steer.apply(tiny, v):
            a = tiny(ids)
        with steer.apply(tiny, v, coeff=2.5):
            b = tiny(ids)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_bf16_model():
    model = steerlens.tiny_model(n_layers=3, d_model=64, seed=0, dtype=torch.bfloat16)
    v = rand_vec(9, norm=1.0)  # float32 vector, cast to the model's dtype in the hook
    ids, mask, _ = tokenize(model, PROMPTS, padding_side="left")
    seen = {}

    def record(x, hook):
        seen["dtype"] = x.dtype
        return x

    with torch.inference_mode(), steer.apply(model, v, coeff=2.0), \
            model.hooks(fwd_hooks=[(f"blocks.{LAYER}.hook_resid_post", record)]):
        got = model(ids, attention_mask=mask)
    assert seen["dtype"] == torch.bfloat16 and got.dtype == torch.bfloat16
    want = reference_logits(model, ids, mask, (2.0 * v[LAYER]).bfloat16().expand(4, -1), mask.bool())
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    out = steer.generate(model, PROMPTS, [v, None, v, v], coeff=[1, 0, 2, 3], max_new_tokens=4)
    assert len(out) == 4
    for op in ("ablate", "clamp", "add_norm"):
        with torch.inference_mode(), steer.apply(model, v, op=op, coeff=0.5):
            assert model(ids, attention_mask=mask).dtype == torch.bfloat16
    assert no_hooks_left(model)


def test_no_hooks_left_after_exceptions(tiny):
    v = rand_vec(0)
    with pytest.raises(RuntimeError, match="boom"):
        with steer.apply(tiny, v, op="ablate", sites="all", layers="all"):
            tiny("hello")
            raise RuntimeError("boom")
    assert no_hooks_left(tiny)
    # an error raised from inside a hook during generation (per-row vectors vs batch size)
    with pytest.raises(ValueError, match="2 per-row"):
        with steer.apply(tiny, [v, v], coeff=[1.0, 2.0]):
            tiny.generate(PROMPTS[0], max_new_tokens=3, verbose=False)
    assert no_hooks_left(tiny)
    with pytest.raises(ValueError, match="2 rows for 3 prompts"):
        steer.generate(tiny, PROMPTS[:3], {LAYER: torch.zeros(2, 64)})
    assert no_hooks_left(tiny)
    # the same context object cannot be entered twice at once; it can be reused afterwards
    ctx = steer.apply(tiny, v)
    with ctx:
        with pytest.raises(RuntimeError, match="already active"):
            ctx.__enter__()
    with ctx:
        tiny("hi")
    assert no_hooks_left(tiny)


def test_bad_input_errors(tiny):
    v = rand_vec(0)
    wide = SteeringVector({LAYER: torch.ones(32)})
    with pytest.raises(ValueError, match="d_model 64"):
        steer.apply(tiny, wide)
    with pytest.raises(ValueError, match="fingerprint"):
        steer.apply(tiny, rand_vec(0, fingerprint="f" * 16))
    steer.apply(tiny, rand_vec(0, fingerprint="f" * 16), force=True)
    with pytest.raises(ValueError, match="out of range"):
        steer.apply(tiny, v, layers=[3])
    with pytest.raises(ValueError, match="3 layers"):
        steer.apply(tiny, rand_vec(0, layers=(5,)))
    for bad in (float("nan"), float("inf"), [1.0, float("-inf")]):
        with pytest.raises(ValueError, match="finite"):
            steer.apply(tiny, v, coeff=bad)
    with pytest.raises(ValueError, match="NaN or inf"):
        steer.apply(tiny, {LAYER: torch.tensor([float("nan")] * 64)})
    with pytest.raises(ValueError, match=r"\[64\]"):
        steer.apply(tiny, {LAYER: torch.zeros(65)})
    with pytest.raises(ValueError, match="op must be one of"):
        steer.apply(tiny, v, op="multiply")
    with pytest.raises(ValueError, match="positions must be"):
        steer.apply(tiny, v, positions="middle")
    with pytest.raises(ValueError, match="sites must be"):
        steer.apply(tiny, v, sites=["resid_mid"])
    with pytest.raises(ValueError, match="clamp.* needs coeff"):
        steer.apply(tiny, v, op="clamp")
    with pytest.raises(ValueError, match="coeff has 3 values for 2"):
        steer.apply(tiny, [v, v], coeff=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="every row is None"):
        steer.apply(tiny, [None, None])
    with pytest.raises(TypeError):
        steer.apply(tiny, "v.safetensors")
    with pytest.raises(ValueError, match="prompts is empty"):
        steer.generate(tiny, [], v)
    with pytest.raises(ValueError, match="empty string"):
        steer.generate(tiny, [""], v)
    with pytest.raises(ValueError, match="longer than the model's context"):
        steer.generate(tiny, ["x" * 400], v)
    with pytest.raises(ValueError, match="2 per-row vectors for 4 prompts"):
        steer.generate(tiny, PROMPTS, [v, v])
    assert no_hooks_left(tiny)


# -- hardening: inputs that used to give internal errors or silently wrong results ----------------
def test_coefficients_that_overflow_or_are_not_numbers_are_refused(tiny):
    v = rand_vec(0)
    for huge in (1e39, 1e20, [1.0, 1e30]):
        with pytest.raises(ValueError, match="too large"):
            steer.apply(tiny, [v, v] if isinstance(huge, list) else v, coeff=huge)
    for bad in ("12", b"1", True, ["1", 2.0], [True, 1.0], {"a": 1}):
        with pytest.raises(TypeError, match="coeff"):
            steer.apply(tiny, v, coeff=bad)
    # under the bound the output is finite, or (if the model's numerics overflow) a ValueError
    out = steer.generate(tiny, PROMPTS[:2], v, coeff=1e12, max_new_tokens=2, return_tokens=True)
    assert len(out) == 2
    assert no_hooks_left(tiny)


def test_a_vector_is_applied_at_the_hook_it_was_taken_at(tiny):
    v = rand_vec(1)
    mlp = v.replace(hook="blocks.1.hook_mlp_out")
    ids, mask, _ = tokenize(tiny, PROMPTS, padding_side="left")
    with torch.inference_mode(), steer.apply(tiny, mlp, coeff=2.0):
        got = tiny(ids, attention_mask=mask)
    hook = [("blocks.1.hook_mlp_out", lambda x, hook: x + 2.0 * v[LAYER])]
    with torch.inference_mode(), tiny.hooks(fwd_hooks=hook):
        want = tiny(ids, attention_mask=mask)
    real = mask.bool()  # steering leaves pads alone; the manual hook shifts them too
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="taken at"):
        steer.apply(tiny, mlp, sites="resid_post")
    with pytest.raises(ValueError, match="not a residual-stream write"):
        steer.apply(tiny, v.replace(hook="blocks.1.hook_resid_mid"))
    steer.apply(tiny, mlp, op="ablate", sites="all")  # a direction may be ablated at any residual write


def test_negative_layer_keys_count_from_the_end(tiny):
    d = torch.randn(64, generator=torch.Generator().manual_seed(3))
    ids, mask, _ = tokenize(tiny, PROMPTS[:2], padding_side="left")
    with torch.inference_mode():
        with steer.apply(tiny, {-1: d}):
            a = tiny(ids, attention_mask=mask)
        with steer.apply(tiny, {2: d}):
            b = tiny(ids, attention_mask=mask)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    with pytest.raises(ValueError, match="out of range"):
        steer.apply(tiny, {-4: d})
    with pytest.raises(ValueError, match="twice"):
        steer.apply(tiny, {-1: d, 2: d})


def test_explicit_positions_outside_the_prompt_are_refused(tiny):
    with pytest.raises(ValueError, match="outside the prompt of row 0"):
        with steer.apply(tiny, rand_vec(0), positions=[10]):
            tiny("hi")
    with pytest.raises(ValueError, match="outside the prompt"):
        steer.generate(tiny, ["hi", "hello"], rand_vec(0), positions=[-4])
    assert no_hooks_left(tiny)


def test_per_row_vectors_at_different_layers_stay_on_their_own_layers(tiny):
    a, b = rand_vec(4, norm=2.0, layers=(0,)), rand_vec(5, norm=2.0, layers=(2,))
    ids, mask, _ = tokenize(tiny, PROMPTS[:2], padding_side="left")
    with torch.inference_mode(), steer.apply(tiny, [a, b], coeff=[1.0, 1.0]):
        both = tiny(ids, attention_mask=mask)
    for r, v in enumerate((a, b)):
        with torch.inference_mode(), steer.apply(tiny, [v if i == r else None for i in range(2)], coeff=[1.0, 1.0]):
            solo = tiny(ids, attention_mask=mask)
        torch.testing.assert_close(both[r], solo[r], atol=1e-6, rtol=0)


def test_per_row_positions_are_sliced_with_the_rows(tiny):
    v = rand_vec(6, norm=3.0)
    pos = [[0], [-1], [1, 2], [-2]]
    whole = steer.generate(tiny, PROMPTS, v, positions=pos, max_new_tokens=4, stop_at_eos=False, return_tokens=True)
    chunked = steer.generate(tiny, PROMPTS, v, positions=pos, max_new_tokens=4, stop_at_eos=False,
                             return_tokens=True, batch_size=3)
    solo = [steer.generate(tiny, [p], v, positions=[q], max_new_tokens=4, stop_at_eos=False, return_tokens=True)[0]
            for p, q in zip(PROMPTS, pos)]
    assert whole == chunked == solo
    with pytest.raises(ValueError, match="3 per-row lists for 4 prompts"):
        steer.generate(tiny, PROMPTS, v, positions=pos[:3])


def test_seeded_sampling_is_per_row_and_leaves_every_global_rng_alone(tiny):
    state = torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    kw = dict(do_sample=True, seed=7, max_new_tokens=6, stop_at_eos=False, return_tokens=True)
    batched = steer.generate(tiny, PROMPTS, **kw)
    assert steer.generate(tiny, PROMPTS, batch_size=1, **kw) == batched
    assert steer.generate(tiny, PROMPTS[1:], **{**kw, "seed": 8}) == batched[1:]  # row i draws from seed + i
    assert steer.generate(tiny, PROMPTS, **{**kw, "seed": 9}) != batched
    assert torch.equal(torch.random.get_rng_state(), state)
    if cuda is not None:
        assert all(torch.equal(a, b) for a, b in zip(torch.cuda.get_rng_state_all(), cuda))
    for bad in (dict(temperature=0), dict(top_p=1.5), dict(top_k=0), dict(seed=-1), dict(seed="1")):
        with pytest.raises(ValueError):
            steer.generate(tiny, PROMPTS[:1], **{**kw, **bad})


def test_prompt_plus_max_new_tokens_longer_than_the_context(tiny):
    prompt = "x" * 250  # 251 tokens with BOS; the tiny model's context is 256
    assert len(steer.generate(tiny, prompt, max_new_tokens=5, return_tokens=True)) <= 5
    with pytest.raises(ValueError, match="max_new_tokens=6: 257 tokens do not fit the model's context of 256"):
        steer.generate(tiny, prompt, max_new_tokens=6)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        steer.generate(tiny, "hi", max_new_tokens=0)
