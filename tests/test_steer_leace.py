"""LEACE concept erasure: the guarantee on the fitting data, the operator, application inside the
tiny model through ``steer.apply(..., op="leace")`` (exact positions, padding, KV cache, hook
hygiene), storage, input errors, and held-out probing on the embedded Gemma."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from test_steer_apply import PROMPTS, _sel, rand_vec

import steer
import steerlens
from steer import operators as ops
from steer.leace import ConceptEraser, fit_eraser
from steerlens.hooks import count_hooks
from steerlens.tokens import tokenize

LAYER = 1
FRUIT = ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum"]
NUMBER = ["seven", "eight", "nine", "four", "three", "twenty", "twelve", "forty"]


def vocab_prompts(n_per_class=80, seed=0):
    """Prompts of 3-5 words from one of two vocabularies (label 1: fruit, 0: numbers), interleaved."""
    rng = np.random.default_rng(seed)
    prompts, labels = [], []
    for _ in range(n_per_class):
        for label, words in ((1, FRUIT), (0, NUMBER)):
            prompts.append(" ".join(rng.choice(words, size=rng.integers(3, 6))))
            labels.append(label)
    return prompts, labels


@pytest.fixture(scope="module")
def acts(tiny):
    prompts, labels = vocab_prompts()
    return steerlens.capture(tiny, prompts, "resid_post", pool="mean", labels=labels, progress=False)


@pytest.fixture(scope="module")
def eraser(acts):
    return fit_eraser(acts)


def record(model, name, ids, mask):
    """``name``'s activation in a forward pass (a hook added last, so it sees any steering)."""
    seen = {}

    def hook(x, hook):
        seen["x"] = x.clone()
        return x

    with torch.inference_mode(), model.hooks(fwd_hooks=[(name, hook)]):
        model(ids, attention_mask=mask)
    return seen["x"]


# -- the LEACE guarantee -------------------------------------------------------------------------
def test_erased_class_means_are_equal_and_a_fresh_probe_is_at_chance(acts, eraser):
    assert eraser.layers == [0, 1, 2] and eraser.d_model == 64 and eraser.method == "leace"
    assert eraser.fingerprint == acts.info["fingerprint"] and eraser.info["classes"] == [0, 1]
    y = acts.labels
    for layer in eraser.layers:
        x = acts.at(layer)
        before = LogisticRegression(max_iter=2000).fit(x.numpy(), y).score(x.numpy(), y)
        assert before >= 0.95, (layer, before)
        xe = eraser(x, layer)
        gap = (xe[y == 1].mean(0) - xe[y == 0].mean(0)).abs().max()
        assert gap < 1e-4 * x.abs().max(), (layer, float(gap))
        after = LogisticRegression(max_iter=2000).fit(xe.numpy(), y).score(xe.numpy(), y)
        assert after <= 0.6, (layer, after)


def test_k_class_concept_on_synthetic_activations():
    g = torch.Generator().manual_seed(0)
    n, d, k = 300, 16, 3
    y = torch.arange(n) % k
    x = torch.randn(n, d, generator=g) + 3.0 * torch.randn(k, d, generator=g)[y]
    e = fit_eraser({"blocks.0.hook_resid_post": x}, y.tolist())
    assert e.info["classes"] == [0, 1, 2] and e[0].proj_left.shape[0] == d
    xe = e(x)
    means = torch.stack([xe[y == c].mean(0) for c in range(k)])
    assert (means - means.mean(0)).abs().max() < 1e-4
    torch.testing.assert_close(xe.mean(0), x.mean(0), atol=1e-4, rtol=0)  # the unconditional mean stays


# -- the operator --------------------------------------------------------------------------------
def test_streaming_fit_equals_one_batch_and_concept_erasure(acts):
    from concept_erasure import LeaceEraser

    from steer.leace import EraserFitter

    one = fit_eraser(acts, layers=[LAYER], batch_size=10_000)
    streamed = fit_eraser(acts, layers=[LAYER], batch_size=7)  # 23 batches, the last one short
    x = acts.at(LAYER)
    for a, b in zip(one[LAYER], streamed[LAYER]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    ref = LeaceEraser.fit(x.double(), torch.as_tensor(acts.labels, dtype=torch.float64)[:, None])
    torch.testing.assert_close(streamed(x, LAYER), ref(x.double()).float(), atol=1e-4, rtol=1e-4)
    # a real-valued concept z streams too; its erased projection is uncorrelated with z
    z = torch.as_tensor(acts.labels, dtype=torch.float64) + 0.1 * torch.randn(len(x), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    e = EraserFitter().update({LAYER: x[:80]}, z=z[:80]).update({LAYER: x[80:]}, z=z[80:]).eraser()
    xe = e(x, LAYER).double()
    cov = ((xe - xe.mean(0)) * (z - z.mean())[:, None]).mean(0)
    assert cov.abs().max() < 1e-6 and e.info == {"z_dim": 1, "n": len(x)}


def test_streaming_fitter_errors(acts):
    from steer.leace import EraserFitter

    x = acts.at(LAYER)
    with pytest.raises(ValueError, match=r"labels hold 'pear', not one of classes \[0, 1\]"):
        EraserFitter([0, 1]).update({LAYER: x[:2]}, ["pear", 0])
    with pytest.raises(ValueError, match="single class"):
        EraserFitter([1]).update({LAYER: x[:2]}, [1, 1])
    with pytest.raises(ValueError, match="are 32 wide in this batch, 64 before"):
        EraserFitter([0, 1]).update({LAYER: x[:4]}, [0, 1, 0, 1]).update({LAYER: x[:4, :32]}, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="pass z"):
        EraserFitter().update({LAYER: x[:4]}, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="empty"):
        EraserFitter([0, 1]).eraser()
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        fit_eraser(acts, batch_size=0)


def test_operator_matches_concept_erasure_and_keeps_bf16(acts):
    from concept_erasure import LeaceEraser

    x, y = acts.at(LAYER).double(), torch.as_tensor(acts.labels).double()
    ref = LeaceEraser.fit(x, y)
    e = ConceptEraser({LAYER: ref})  # a LeaceEraser is accepted as is (stored float32)
    h = x.float().view(8, 20, 64)
    torch.testing.assert_close(ops.leace(h, e[LAYER]), ref(h.double()).float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ops.apply_op("leace", h, e[LAYER], None), ops.leace(h, e[LAYER]))
    out = ops.leace(h.bfloat16(), e[LAYER])
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ops.leace(h, e[LAYER]), atol=0.1, rtol=0.02)


# -- inside the model ----------------------------------------------------------------------------
@pytest.mark.parametrize("positions", ["all", [0, -1], [1, 2]])
def test_apply_erases_exactly_the_steered_positions(tiny, eraser, positions):
    ids, mask, lengths = tokenize(tiny, PROMPTS, padding_side="left")
    name = f"blocks.{LAYER}.hook_resid_post"
    plain = record(tiny, name, ids, mask)
    with steer.apply(tiny, eraser, op="leace", layers=[LAYER], positions=positions):
        got = record(tiny, name, ids, mask)
    sel = _sel(positions, mask, ids.shape[1], lengths)
    assert (~mask.bool()).any() and (positions == "all" or (mask.bool() & ~sel).any())
    torch.testing.assert_close(got[sel], eraser(plain, LAYER)[sel], atol=1e-6, rtol=0)
    assert torch.equal(got[~sel], plain[~sel])  # pads and unsteered positions untouched
    assert (got[sel] - plain[sel]).abs().max() > 1e-3


@pytest.mark.parametrize("positions", ["all", "generated", [0, 2, -1]])
def test_kv_cache_generation_equals_full_recompute(tiny, eraser, positions):
    n_new = 6
    ids, mask, lengths = tokenize(tiny, PROMPTS, padding_side="left")
    width, e = ids.shape[1], eraser[LAYER]
    with torch.inference_mode(), steer.apply(tiny, eraser, op="leace", layers=[LAYER], positions=positions):
        out = tiny.generate(ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False, verbose=False,
                            stop_at_eos=False, use_past_kv_cache=True, output_logits=True)
    tokens = ids.clone()
    for step in range(n_new):
        full_mask = torch.cat([mask, torch.ones(len(PROMPTS), step, dtype=mask.dtype)], dim=1)
        sel = _sel(positions, full_mask, width, lengths)

        def hook(x, hook, sel=sel):  # independent of steer's position logic
            return torch.where(sel[..., None], ops.leace(x, e), x)

        with torch.inference_mode(), tiny.hooks(fwd_hooks=[(f"blocks.{LAYER}.hook_resid_post", hook)]):
            logits = tiny(tokens, attention_mask=full_mask, return_type="logits")[:, -1]
        torch.testing.assert_close(out.logits[step], logits, atol=1e-4, rtol=1e-4)
        tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out.sequences, tokens)
    nocache = steer.generate(tiny, PROMPTS, eraser, op="leace", layers=[LAYER], positions=positions,
                             max_new_tokens=n_new, use_past_kv_cache=False, stop_at_eos=False, return_tokens=True)
    assert nocache == tokens[:, width:].tolist()


def test_no_hooks_left_after_exceptions(tiny, eraser):
    before = count_hooks(tiny)
    with pytest.raises(RuntimeError, match="boom"):
        with steer.apply(tiny, eraser, op="leace"):
            tiny("hello")
            assert count_hooks(tiny) > before
            raise RuntimeError("boom")
    assert count_hooks(tiny) == before

    def fail(x, hook):
        raise RuntimeError("boom in forward")

    with pytest.raises(RuntimeError, match="boom in forward"):  # raised inside a forward pass
        with steer.apply(tiny, eraser, op="leace"), tiny.hooks(fwd_hooks=[("blocks.2.hook_resid_post", fail)]):
            tiny.generate(PROMPTS[0], max_new_tokens=2, verbose=False)
    assert count_hooks(tiny) == before


# -- storage and compatibility -------------------------------------------------------------------
def test_save_load_round_trip(tmp_path, eraser):
    e = ConceptEraser(eraser.erasers, model_name="m", fingerprint=eraser.fingerprint, dataset="fruit",
                      dataset_hash="h", info=eraser.info)
    path = e.save(tmp_path / "e.safetensors")
    back = ConceptEraser.load(path)
    assert back.metadata() == e.metadata()
    for layer in e.layers:
        assert all(torch.equal(a, b) for a, b in zip(back[layer], e[layer]))
    with pytest.raises(ValueError, match="not a steerlens concept eraser"):
        ConceptEraser.load(rand_vec(0).save(tmp_path / "v.safetensors"))


def test_model_compatibility(tiny, eraser):
    narrow = steerlens.tiny_model(n_layers=3, d_model=32, seed=0)
    with pytest.raises(ValueError, match="eraser has width 64 .* d_model 32"):
        steer.apply(narrow, eraser, op="leace")
    with pytest.raises(ValueError, match="eraser has width 64"):
        steer.apply(narrow, eraser, op="leace", force=True)  # force skips the fingerprint only
    other = ConceptEraser(eraser.erasers, fingerprint="f" * 16)
    with pytest.raises(ValueError, match="fingerprint.*force=True"):
        steer.apply(tiny, other, op="leace")
    steer.apply(tiny, other, op="leace", force=True)


# -- input errors --------------------------------------------------------------------------------
def test_fit_errors(acts):
    x = acts.at(LAYER).clone()
    y = acts.labels
    name = f"blocks.{LAYER}.hook_resid_post"
    x[3, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf in 1 of"):
        fit_eraser({name: x}, y)
    with pytest.raises(ValueError, match="single class"):
        fit_eraser({name: acts.at(LAYER)}, np.ones(len(y)))
    with pytest.raises(ValueError, match="empty"):
        fit_eraser({name: torch.zeros(0, 64)}, [])
    with pytest.raises(ValueError, match="rows but there are"):
        fit_eraser({name: acts.at(LAYER)}, y[:-1])
    with pytest.raises(ValueError, match=r"layers \[5\] were not captured"):
        fit_eraser(acts, layers=[5])
    with pytest.raises(ValueError, match="no captured hook matches 'mlp_out'"):
        fit_eraser(acts, hook="mlp_out")
    with pytest.raises(ValueError, match="no labels"):
        fit_eraser({name: acts.at(LAYER)})
    with pytest.raises(TypeError, match="acts must be"):
        fit_eraser(acts.at(LAYER), y)


def test_apply_errors(tiny, eraser):
    v = rand_vec(0)
    with pytest.raises(ValueError, match="needs a ConceptEraser"):
        steer.apply(tiny, v, op="leace")
    with pytest.raises(ValueError, match="applied with op='leace'"):
        steer.apply(tiny, eraser, op="add")
    with pytest.raises(ValueError, match="takes no coeff"):
        steer.apply(tiny, eraser, op="leace", coeff=2.0)
    with pytest.raises(ValueError, match=r"not fitted at layers \[0\]"):
        steer.apply(tiny, ConceptEraser({LAYER: eraser[LAYER]}), op="leace", layers=[0])
    with pytest.raises(ValueError, match="sites='resid_post'"):
        steer.apply(tiny, eraser, op="leace", sites="mlp_out")
    with pytest.raises(ValueError, match=r"proj_left .* must be \[d, k\] and \[k, d\]"):
        ConceptEraser({0: (torch.zeros(64, 2), torch.zeros(3, 64), torch.zeros(64))})
    with pytest.raises(ValueError, match="NaN or inf"):
        ConceptEraser({0: (torch.full((64, 1), float("nan")), torch.zeros(1, 64), None)})


# -- the embedded Gemma ----------------------------------------------------------------------------
@pytest.mark.gemma
def test_gemma_harmfulness_erased_at_layer_6_is_not_linearly_recoverable(gemma_harm_acts):
    """Erase the harmfulness concept at layer 6 (fitted on a grouped train split); a logistic probe
    trained on erased train activations is at chance on erased held-out ones, while the same probe
    on the unerased activations separates them."""
    from threadpoolctl import threadpool_limits

    from probes import LogisticProbe, grouped_split
    from probes.metrics import auroc

    layer, acts = 6, gemma_harm_acts
    y = acts.labels
    groups = np.asarray([r["group"] for r in acts.rows])
    tr, te = grouped_split(y, groups, fractions=(0.7, 0.3), seed=0)
    assert not set(groups[tr]) & set(groups[te])
    x = acts.at(layer)
    eraser = fit_eraser({f"blocks.{layer}.hook_resid_post": x[tr]}, y[tr])
    xe = eraser(x, layer)
    with threadpool_limits(limits=1):
        aurocs = {}
        for name, data in (("raw", x), ("erased", xe)):
            probe = LogisticProbe().fit(data[tr], y[tr], groups=groups[tr])
            aurocs[name] = auroc(y[te], probe.decision_function(data[te]))
    assert aurocs["raw"] >= 0.9, aurocs
    assert aurocs["erased"] <= 0.6, aurocs


def test_the_old_op_name_still_works_with_a_warning(tiny, eraser):
    ids, mask, _ = tokenize(tiny, PROMPTS, padding_side="left")
    with torch.inference_mode(), steer.apply(tiny, eraser, op="leace", layers=[LAYER]):
        want = tiny(ids, attention_mask=mask)
    with pytest.warns(FutureWarning, match="op='leace'"):
        ctx = steer.apply(tiny, eraser, op="erase", layers=[LAYER])
    with torch.inference_mode(), ctx:
        got = tiny(ids, attention_mask=mask)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
