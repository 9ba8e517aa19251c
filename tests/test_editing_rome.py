"""ROME math, key statistics, edit handles, errors and hooks on tiny random models (fast)."""

import time

import pytest
import torch

import steerlens
from editing import prompts, sites
from editing.covariance import _MEMO, CovarianceFitter, KeyStatistics, cache_path, corpus_hash, key_statistics
from editing.rome import RomeConfig, as_request, compute_key, edit, edited, rank_one_update
from steerlens.forward import logits_at, run_to
from steerlens.generation import categorical
from steerlens.hooks import count_hooks
from steerlens.tokens import encode

FAST = RomeConfig(n_prefixes=3, prefix_tokens=4, n_value_prefixes=2, steps=4, n_tokens=400)
CORPUS = ["the quick brown fox jumps over the lazy dog", "a stitch in time saves nine stitches",
          "Bob lives in the city of Paris and works in a bakery", "many hands make light work"] * 4
REQ = as_request(id="bob", prompt="Bob lives in the city of", subject="Bob", target_true=" Paris", target_new=" Rome",
                 paraphrases=("Where does Bob live? In the city of",), neighbourhood=("Alice lives in the city of",))


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A 2-block random Llama (Linear, gated MLP) with the byte tokenizer: the Gemma/Llama layout."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import LlamaConfig, LlamaForCausalLM

    from steerlens.tiny import byte_tokenizer

    path = tmp_path_factory.mktemp("tiny-llama")
    tok = byte_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=256, eos_token_id=256, pad_token_id=256, architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    model = TransformerBridge.boot_transformers(str(path), device="cpu", dtype=torch.float32)
    model.eval()
    model.requires_grad_(False)
    model.cfg.model_name = "tiny-llama"
    model("warm up")
    return model


@pytest.fixture(scope="module")
def tiny_stats(tiny):
    return key_statistics(tiny, 1, corpus=CORPUS, n_tokens=400, cache=False, progress=False)


def _weights(model):
    return [sites.down_proj(model, L)[0].detach().clone() for L in range(model.cfg.n_layers)]


def _same(model, saved):
    return all(torch.equal(sites.down_proj(model, L)[0], w) for L, w in enumerate(saved))


# --- math -----------------------------------------------------------------------------------

def test_rank_one_update_maps_key_to_value_and_spares_c_orthogonal_keys():
    g = torch.Generator().manual_seed(0)
    d_out, d_in = 12, 20
    W = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    K = torch.randn(d_in, 200, generator=g, dtype=torch.float64)
    C = K @ K.T / 200
    C_inv = torch.linalg.inv(C)
    k_star = torch.randn(d_in, generator=g, dtype=torch.float64)
    v_star = torch.randn(d_out, generator=g, dtype=torch.float64)
    dW = rank_one_update(W, C_inv, k_star, v_star)
    assert torch.linalg.matrix_rank(dW) == 1
    torch.testing.assert_close((W + dW) @ k_star, v_star, atol=1e-10, rtol=0)
    # keys with kᵀ C⁻¹ k* = 0 are untouched
    u = C_inv @ k_star
    k = torch.randn(d_in, generator=g, dtype=torch.float64)
    k = k - (k @ u) / (u @ u) * u
    torch.testing.assert_close((W + dW) @ k, W @ k, atol=1e-10, rtol=0)


def test_rank_one_update_is_the_least_squares_minimiser_under_c():
    # ROME eq. 2: among W' with W'k* = v*, minimises tr((W'-W) C (W'-W)ᵀ); perturbing within the
    # constraint set only increases it
    g = torch.Generator().manual_seed(1)
    W = torch.randn(5, 8, generator=g, dtype=torch.float64)
    K = torch.randn(8, 50, generator=g, dtype=torch.float64)
    C = K @ K.T / 50
    k, v = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    dW = rank_one_update(W, torch.linalg.inv(C), k, v)
    cost = lambda D: torch.trace(D @ C @ D.T)
    for _ in range(5):
        P = torch.randn(5, 8, generator=g, dtype=torch.float64)
        P = P - torch.outer(P @ k, k) / (k @ k)  # keeps (W+dW+P) k* = v*
        assert cost(dW + 0.1 * P) > cost(dW)


def test_covariance_fitter_matches_torch_cov_streamed():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 16, generator=g) * torch.linspace(0.1, 3, 16) + 2.0
    f = CovarianceFitter(16)
    for chunk in x.split(77):
        assert f.update(chunk) is f
    stats = f.finalize()
    assert stats.n == 500
    torch.testing.assert_close(stats.cov, torch.cov(x.double().T), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(stats.mom2, x.double().T @ x.double() / 500, atol=1e-10, rtol=1e-10)
    assert stats.mom2.dtype == torch.float64
    with pytest.raises(ValueError):
        CovarianceFitter(3).finalize()


def test_key_statistics_cache_round_trip(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("STEERLENS_CACHE", str(tmp_path))
    stats = key_statistics(tiny, 1, corpus=CORPUS, n_tokens=300, progress=False)
    path = cache_path(tiny, 1, corpus_hash(CORPUS, 0), 300, 128)
    assert path.is_file() and str(tmp_path) in str(path)
    assert stats.n == 300 and stats.info["layer"] == 1
    _MEMO.clear()
    t = time.perf_counter()
    again = key_statistics(tiny, 1, corpus=CORPUS, n_tokens=300, progress=False)
    assert time.perf_counter() - t < 1.0
    assert torch.equal(again.mom2, stats.mom2) and torch.equal(again.mean, stats.mean) and again.n == stats.n
    # the statistics are those of the keys: compare with a direct capture
    other = key_statistics(tiny, 1, corpus=CORPUS[:1], n_tokens=10_000, cache=False, progress=False)
    ids = torch.tensor([encode(tiny, CORPUS[0])])
    k = run_to(tiny, ids, torch.ones_like(ids), sites.key_hook(1))[0, 1:].double()
    torch.testing.assert_close(other.mom2, k.T @ k / k.shape[0], atol=1e-8, rtol=1e-6)
    # another corpus, another key
    assert corpus_hash(CORPUS[:2], 0) != corpus_hash(CORPUS, 0)


def test_key_statistics_cache_key_names_chunk_tokens_and_sample_batch(tiny, tmp_path, monkeypatch):
    """Requests that differ only in chunk_tokens (or, for sampled text, in the sampling batch)
    get their own statistics; an identical request is a cache hit."""
    import editing.covariance as cov

    monkeypatch.setenv("STEERLENS_CACHE", str(tmp_path))
    a = key_statistics(tiny, 1, corpus=CORPUS, n_tokens=300, chunk_tokens=128, progress=False)
    b = key_statistics(tiny, 1, corpus=CORPUS, n_tokens=300, chunk_tokens=8, progress=False)
    assert not torch.equal(a.mom2, b.mom2) and (a.info["chunk_tokens"], b.info["chunk_tokens"]) == (128, 8)
    assert key_statistics(tiny, 1, corpus=CORPUS, n_tokens=300, chunk_tokens=8, progress=False) is b
    _MEMO.clear()
    again = key_statistics(tiny, 1, corpus=CORPUS, n_tokens=300, chunk_tokens=8, progress=False)  # from disk
    assert torch.equal(again.mom2, b.mom2)
    assert key_statistics(tiny, 1, corpus=CORPUS, n_tokens=300, chunk_tokens=8, batch_size=3, progress=False) is again

    monkeypatch.setattr(cov, "sample", lambda model, prompts, *, n, max_new_tokens, seed, **kw:
                        [f"text {seed} " * max_new_tokens for _ in range(n)])
    # 100 rows of 15 tokens: 64 + 36 rows (seeds 0, 1) or all 100 at once (seed 0)
    s64 = key_statistics(tiny, 1, n_tokens=1500, chunk_tokens=16, batch_size=16, progress=False)
    s128 = key_statistics(tiny, 1, n_tokens=1500, chunk_tokens=16, batch_size=128, progress=False)
    assert not torch.equal(s64.mom2, s128.mom2)
    assert key_statistics(tiny, 1, n_tokens=1500, chunk_tokens=16, batch_size=32, progress=False) is s64  # 64 rows too
    assert len(list((tmp_path / "editing" / "stats").glob("*.safetensors"))) == 4


@pytest.mark.parametrize("lines, match", [
    (['{"text": "fine"}', '{"text": "broken'], r"c\.jsonl:2: not valid JSON"),
    (['{"text": "fine"}', "", '{"label": 1}'], r"c\.jsonl:3: .*none of the text fields"),
    (['{"text": 5}'], r"c\.jsonl:1: field 'text' must be a string, got 5"),
    (['[1, 2]'], r"c\.jsonl:1: expected a JSON object"),
    ([], r"c\.jsonl holds no text"),
])
def test_malformed_jsonl_corpus_names_the_file_and_line(tiny, tmp_path, lines, match):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(f"{line}\n" for line in lines))
    with pytest.raises(ValueError, match=match):
        key_statistics(tiny, 1, corpus=path, n_tokens=100, cache=False, progress=False)


def test_bad_corpus_and_chunk_arguments(tiny, tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="empty.txt holds no text"):
        key_statistics(tiny, 1, corpus=tmp_path / "empty.txt", cache=False, progress=False)
    with pytest.raises(TypeError, match=r"corpus\[1\] must be a str, got int"):
        key_statistics(tiny, 1, corpus=["a text", 5], cache=False, progress=False)
    with pytest.raises(ValueError, match=r"chunk_tokens must be in 2\.\.256"):
        key_statistics(tiny, 1, corpus=CORPUS, chunk_tokens=300, cache=False, progress=False)


def test_shipped_corpus_by_name(tmp_path, monkeypatch):
    from editing.covariance import corpus_texts, shipped_corpus

    texts = shipped_corpus()
    assert corpus_texts("shipped") == texts and len(texts) > 1000
    assert corpus_hash("shipped", 0) == corpus_hash(texts, 0)
    monkeypatch.chdir(tmp_path)  # a file of that name wins over the name
    (tmp_path / "shipped").write_text("one document\n\nanother")
    assert corpus_texts("shipped") == ["one document", "another"]


def test_key_statistics_default_corpus_is_model_sampled_and_seeded(tiny, monkeypatch):
    """corpus=None (the default) samples text from the model itself: deterministic by seed, and it
    samples only as many rows as the budget needs."""
    import editing.covariance as cov
    from editing.prompts import sample

    asked = []

    def spy(model, texts, *, n, **kw):
        asked.append(n)
        return sample(model, texts, n=n, **kw)

    monkeypatch.setattr(cov, "sample", spy)
    a = key_statistics(tiny, 1, n_tokens=300, seed=0, chunk_tokens=32, cache=False, progress=False)
    assert asked[0] == 10  # ceil(300 / 31) rows of 31 sampled tokens, not a whole batch of 64
    b = key_statistics(tiny, 1, n_tokens=300, seed=0, chunk_tokens=32, cache=False, progress=False)
    c = key_statistics(tiny, 1, n_tokens=300, seed=1, chunk_tokens=32, cache=False, progress=False)
    assert a.n == 300 and torch.isfinite(a.mom2).all() and a.info["corpus_hash"] == corpus_hash(None, 0)
    assert torch.equal(a.mom2, b.mom2) and not torch.equal(a.mom2, c.mom2)


@pytest.mark.parametrize("V,block", [(6, 4), (1000, 512), (512, 512)])
def test_categorical_draws_from_the_distribution(V, block):
    """The two-stage sampler is the categorical distribution: frequencies match ``probs`` (χ² on
    200k draws), zero-probability columns (top-k masking, the vocabulary's padding) never come up."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(V, generator=gen) * 2
    logits[V // 3] = float("-inf")
    probs = logits.softmax(-1)
    n = 200_000
    draws = categorical(probs.expand(n, V), gen, block=block).flatten()
    assert draws.min() >= 0 and draws.max() < V
    counts = torch.bincount(draws, minlength=V).double()
    assert counts[V // 3] == 0
    expected = probs.double() * n
    keep = expected > 20
    chi2 = float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    dof = int(keep.sum()) - 1
    assert chi2 < dof + 6 * (2 * dof) ** 0.5, (chi2, dof)  # ~6σ above the χ² mean


def test_default_budget_depends_on_the_corpus(tiny, monkeypatch):
    """Sampling is slow, reading is not: 8k tokens by default when sampling, 20k from a corpus."""
    import editing.covariance as cov

    asked = []

    def fake_sample(model, prompts, *, n, max_new_tokens, **kw):  # the budget is under test, not the text
        asked.append(n)
        return ["x" * max_new_tokens] * n

    monkeypatch.setattr(cov, "sample", fake_sample)
    a = key_statistics(tiny, 1, cache=False, progress=False)
    assert a.info["n_tokens"] == a.n == cov.DEFAULT_TOKENS and sum(asked) == -(-cov.DEFAULT_TOKENS // 127)
    b = key_statistics(tiny, 1, corpus=CORPUS, cache=False, progress=False)
    assert b.info["n_tokens"] == cov.DEFAULT_CORPUS_TOKENS and b.n < cov.DEFAULT_CORPUS_TOKENS  # all of CORPUS


def test_model_sampled_cache_key_names_the_sampler_version():
    """Statistics cached from the older sampler (the same seed, other texts) are not reused."""
    import hashlib

    assert corpus_hash(None, 0) != corpus_hash(None, 1)
    assert corpus_hash(None, 0) != hashlib.sha256(b"model-sampled:seed=0").hexdigest()[:16]


# --- edits and handles ----------------------------------------------------------------------

@pytest.mark.parametrize("which", ["tiny", "tiny_llama"])
def test_edit_hits_v_star_and_reverts_bit_exactly(which, request):
    model = request.getfixturevalue(which)
    stats = key_statistics(model, 1, corpus=CORPUS, n_tokens=400, cache=False, progress=False)
    saved = _weights(model)
    hooks = count_hooks(model)
    h = edit(model, REQ, layer=1, stats=stats, config=FAST, progress=False)
    assert count_hooks(model) == hooks
    assert not _same(model, saved)
    # the edited down-projection maps k* to v* (float32 weights)
    W = sites.w_out(model, 1)
    torch.testing.assert_close(W @ h.result.k_star, h.result.v_star, atol=1e-4, rtol=1e-4)
    # and the delta lands on the raw MLP output at the subject's last token of the plain prompt
    ids = torch.tensor([encode(model, REQ.prompt)])
    out = run_to(model, ids, torch.ones_like(ids), sites.out_hook(1))[0, prompts.subject_last(model, REQ.prompt, REQ.subject)]
    k0 = compute_key(model, 1, REQ.prompt, REQ.subject, [])
    bias = model.blocks[1].mlp.out.original_component.bias
    expected = W @ k0 + (0 if bias is None else bias.float())
    torch.testing.assert_close(out.float(), expected, atol=1e-4, rtol=1e-4)
    # only the edited layer changed
    assert all(torch.equal(sites.down_proj(model, L)[0], saved[L]) for L in range(model.cfg.n_layers) if L != 1)
    h.revert()
    assert _same(model, saved)
    with pytest.raises(ValueError, match="already reverted"):
        h.revert()
    assert _same(model, saved)


def test_stacked_edits_revert_out_of_order(tiny, tiny_stats):
    saved = _weights(tiny)
    reqs = [REQ, as_request(prompt="Ann works as a", subject="Ann", target_true=" nurse", target_new=" pilot"),
            as_request(prompt="The river Nile flows into the", subject="river Nile", target_true=" sea", target_new=" lake")]
    handles = [edit(tiny, r, layer=1, stats=tiny_stats, config=FAST, progress=False) for r in reqs]
    for i in (0, 2, 1):
        handles[i].revert()
    W = sites.down_proj(tiny, 1)[0]
    assert (W - saved[1]).abs().max() <= 1e-6
    W.data.copy_(saved[1])
    # reverting the last edit applied is bit-exact
    a = edit(tiny, reqs[0], layer=1, stats=tiny_stats, config=FAST, progress=False)
    mid = _weights(tiny)
    b = edit(tiny, reqs[1], layer=1, stats=tiny_stats, config=FAST, progress=False)
    b.revert()
    assert _same(tiny, mid)
    a.revert()
    assert _same(tiny, saved)


def test_revert_refuses_when_the_update_is_gone(tiny, tiny_stats):
    """Weights restored another way (copied back, or a stacked edit reverted twice): reverting would
    subtract ΔW from clean weights, so it is refused and nothing changes; other edits still revert."""
    saved = _weights(tiny)
    W = sites.down_proj(tiny, 1)[0]
    a = edit(tiny, REQ, layer=1, stats=tiny_stats, config=FAST, progress=False)
    W.data.copy_(saved[1])  # the user restores the original weights
    with pytest.raises(ValueError, match="no longer in the layer 1 down-projection"):
        a.revert()
    assert _same(tiny, saved) and not a.reverted

    other = as_request(prompt="Ann works as a", subject="Ann", target_true=" nurse", target_new=" pilot")
    b = edit(tiny, other, layer=1, stats=tiny_stats, config=FAST, progress=False)
    c = edit(tiny, REQ, layer=1, stats=tiny_stats, config=FAST, progress=False)
    b.revert()
    with pytest.raises(ValueError, match="already reverted"):
        b.revert()
    with pytest.raises(ValueError, match="no longer"):
        a.revert()  # still gone
    c.revert()
    assert (W - saved[1]).abs().max() <= 1e-6


def test_prompt_longer_than_the_context_is_refused(tiny, tiny_stats):
    saved = _weights(tiny)
    long = as_request(prompt="Bob " + "x" * 300, subject="Bob", target_true=" Paris", target_new=" Rome")
    with pytest.raises(ValueError, match=r"request.prompt is 30\d tokens long and target_new adds 5: .* context of 256"):
        edit(tiny, long, layer=1, stats=tiny_stats, config=FAST, progress=False)
    edge = as_request(prompt="Bob " + "x" * 245, subject="Bob", target_true=" Paris", target_new=" Rome")
    with pytest.raises(ValueError, match="with its longest prefix"):  # fits alone, not with a prefix
        edit(tiny, edge, layer=1, stats=tiny_stats, config=FAST, progress=False)
    assert _same(tiny, saved)


def test_context_manager_reverts_on_exception_and_leaves_no_hooks(tiny, tiny_stats):
    saved = _weights(tiny)
    hooks = count_hooks(tiny)
    with pytest.raises(RuntimeError, match="boom"):
        with edited(tiny, REQ, layer=1, stats=tiny_stats, config=FAST, progress=False) as h:
            assert not _same(tiny, saved)
            assert h.layer == 1
            raise RuntimeError("boom")
    assert _same(tiny, saved)
    assert count_hooks(tiny) == hooks


@pytest.mark.parametrize("kwargs, match", [
    (dict(request=as_request(prompt="Bob lives in", subject="Carol", target_true=" X", target_new=" Y")), "does not occur"),
    (dict(request=as_request(prompt="Bob lives in", subject="Bob", target_true=" X", target_new="")), "tokenises to nothing"),
    (dict(request=as_request(prompt="Bob lives in", subject="Bob", target_true="", target_new=" Y")), "tokenises to nothing"),
    (dict(layer=3), "out of range"),
    (dict(layer=-4), "out of range"),
    (dict(mode="replace"), "mode must be"),
])
def test_bad_input_raises_and_leaves_weights(tiny, tiny_stats, kwargs, match):
    saved = _weights(tiny)
    hooks = count_hooks(tiny)
    kw = dict(request=REQ, layer=1, stats=tiny_stats, config=FAST, progress=False)
    kw.update(kwargs)
    req = kw.pop("request")
    with pytest.raises(ValueError, match=match):
        edit(tiny, req, **kw)
    assert _same(tiny, saved)
    assert count_hooks(tiny) == hooks


def test_failure_during_value_leaves_weights(tiny, tiny_stats, monkeypatch):
    import editing.rome as rome

    saved = _weights(tiny)
    hooks = count_hooks(tiny)
    calls = {"n": 0}
    real = logits_at

    def flaky(model, hidden):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("interrupted")
        return real(model, hidden)

    monkeypatch.setattr(rome, "logits_at", flaky)
    with pytest.raises(RuntimeError, match="interrupted"):
        edit(tiny, REQ, layer=1, stats=tiny_stats, config=FAST, progress=False)
    assert _same(tiny, saved)
    assert count_hooks(tiny) == hooks


def test_stats_for_another_layer_are_refused(tiny, tiny_stats):
    with pytest.raises(ValueError, match="layer"):
        edit(tiny, REQ, layer=2, stats=tiny_stats, config=FAST, progress=False)


def test_bf16_model_edit_runs_in_float32():
    model = steerlens.tiny_model(n_layers=3, d_model=64, seed=0, dtype=torch.bfloat16)
    model("warm up")
    stats = key_statistics(model, 1, corpus=CORPUS, n_tokens=400, cache=False, progress=False)
    saved = _weights(model)
    h = edit(model, REQ, layer=1, stats=stats, config=FAST, progress=False)
    W = sites.down_proj(model, 1)[0]
    assert W.dtype == torch.bfloat16
    assert h.result.k_star.dtype == torch.float32 and h.result.v_star.dtype == torch.float32
    assert torch.isfinite(h.result.delta).all()
    assert not torch.equal(W, saved[1])
    h.revert()
    assert _same(model, saved)


def test_key_statistics_files_are_checked_and_bad_cache_files_are_misses(tiny, tmp_path, monkeypatch):
    """KeyStatistics.load refuses another model's fingerprint, a future version, a version-1 file
    (no format name) and a corrupt one, naming the file; key_statistics recomputes over them."""
    import re

    import editing.covariance as cov
    from steerlens.io import load_tensors, save_tensors

    monkeypatch.setenv("STEERLENS_CACHE", str(tmp_path))
    stats = key_statistics(tiny, 1, corpus=CORPUS, n_tokens=300, progress=False)
    path = cache_path(tiny, 1, corpus_hash(CORPUS, 0), 300, 128)
    back = KeyStatistics.load(path, tiny)
    assert torch.equal(back.mom2, stats.mom2) and back.n == 300 and back.info == stats.info
    t, meta = load_tensors(path)
    assert (meta["format"], meta["version"]) == ("steerlens.key_statistics", cov.VERSION)

    other = steerlens.tiny_model(n_layers=3, d_model=64, seed=1)  # same shapes, other weights
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: .*fingerprint .*force=True"):
        KeyStatistics.load(path, other)
    with pytest.warns(UserWarning, match="used anyway"):
        KeyStatistics.load(path, other, force=True)
    narrow = steerlens.tiny_model(n_layers=3, d_model=32, seed=0)
    with pytest.raises(ValueError, match=r"has width 256 \(it does not match d_mlp 128"):
        KeyStatistics.load(path, narrow, force=True)

    def put(tensors=t, **changes):  # a bad file at the cache path; key_statistics must recompute it
        drop = changes.pop("drop", ())
        save_tensors(path, tensors, {k: v for k, v in {**meta, **changes}.items() if k not in drop})
        _MEMO.clear()

    bad = [
        (dict(version=cov.VERSION + 1), rf"format version {cov.VERSION + 1}; this steerlens reads <= {cov.VERSION}"),
        (dict(fingerprint="0" * 16), r"fingerprint 0{16}.*force=True"),
        (dict(drop=("format", "version"), format_version=1), r"not a steerlens key-statistics file \(metadata format None"),
        (dict(n=1), r"metadata 'n' must be an integer >= 2, got 1"),
        (dict(n_tokens=999), r"statistics of another request \(\{'n_tokens': 999\}\)"),
        (dict(tensors={"mom2": t["mom2"], "mean": t["mean"][:5]}), r"tensor 'mom2' has shape \(256, 256\), but a mean of length 5"),
    ]
    for changes, match in bad:
        put(**changes)
        if "n_tokens" not in changes:  # a file of another request loads: key_statistics refuses it
            with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:? .*{match}"):
                KeyStatistics.load(path, tiny)
        with pytest.warns(UserWarning, match=f"recomputing the key statistics: .*{match}"):
            again = key_statistics(tiny, 1, corpus=CORPUS, n_tokens=300, progress=False)
        assert torch.equal(again.mom2, stats.mom2) and again.info["fingerprint"] == steerlens.fingerprint(tiny)
        assert KeyStatistics.load(path, tiny).n == 300  # the recomputed file replaced the bad one
    path.write_bytes(path.read_bytes()[:100])  # truncated
    _MEMO.clear()
    with pytest.raises(ValueError, match=re.escape(f"{path} is not a readable steerlens key-statistics file")):
        KeyStatistics.load(path)
    with pytest.warns(UserWarning, match="recomputing"):
        assert torch.equal(key_statistics(tiny, 1, corpus=CORPUS, n_tokens=300, progress=False).mom2, stats.mom2)
