import pytest
import torch

import steerlens
from steerlens.activations import Activations
from steerlens.hooks import count_hooks

PROMPTS = ["hello world", "a", "the quick brown fox jumps over", "xyz abc", "tokens"]


def solo(model, prompts, hooks, **kw):
    runs = [steerlens.capture(model, [p], hooks, progress=False, **kw) for p in prompts]
    return {h: torch.cat([r[h] for r in runs]) for h in runs[0].hooks}


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("pool", ["last", "mean", "all"])
def test_batched_equals_one_at_a_time(tiny, pool, padding_side, monkeypatch):
    monkeypatch.setattr(tiny.tokenizer, "padding_side", padding_side)
    acts = steerlens.capture(tiny, PROMPTS, "resid_post", pool=pool, batch_size=3, progress=False)
    ref = solo(tiny, PROMPTS, "resid_post", pool=pool)
    assert acts.hooks == [f"blocks.{i}.hook_resid_post" for i in range(3)]
    for h in acts.hooks:
        torch.testing.assert_close(acts[h], ref[h], atol=1e-5, rtol=1e-5)


def test_positions_and_spans(tiny):
    pool = [-1, 0, (2, 5), (0, 2), 3]
    acts = steerlens.capture(tiny, PROMPTS, "blocks.1.hook_resid_post", pool=pool, batch_size=2, progress=False)
    every = steerlens.capture(tiny, PROMPTS, "blocks.1.hook_resid_post", pool="all", progress=False)
    h = "blocks.1.hook_resid_post"
    expect = []
    for i, p in enumerate(pool):
        toks = every.tokens(h, i)
        expect.append(toks[p] if isinstance(p, int) else toks[p[0] : p[1]].mean(0))
    torch.testing.assert_close(acts[h], torch.stack(expect), atol=1e-5, rtol=1e-5)
    assert acts.pool == "positions"


def test_all_pool_matches_a_plain_forward(tiny):
    """Captured resid_post of the last block equals the HF hidden state before ln_f."""
    acts = steerlens.capture(tiny, PROMPTS[:2], "blocks.2.hook_resid_post", pool="all", progress=False)
    ids = tiny.tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = tiny.original_model(ids, output_hidden_states=True).hidden_states
    # GPT-2's last hidden state is after ln_f; the one before it is block 1's output.
    acts1 = steerlens.capture(tiny, PROMPTS[:1], "blocks.1.hook_resid_post", pool="all", progress=False)
    torch.testing.assert_close(acts1["blocks.1.hook_resid_post"], hidden[2][0], atol=1e-5, rtol=1e-5)
    assert acts.offsets.tolist()[-1] == acts["blocks.2.hook_resid_post"].shape[0]


def test_hook_kinds_and_shapes(tiny):
    acts = steerlens.capture(tiny, PROMPTS, ["mlp_post", "z", "attn_out", "hook_embed"], layers=[1], progress=False)
    assert acts["blocks.1.mlp.hook_post"].shape == (5, 4 * 64)
    assert acts["blocks.1.attn.hook_z"].shape == (5, 64)
    assert acts["blocks.1.hook_attn_out"].shape == (5, 64)
    assert acts["hook_embed"].shape == (5, 64)
    assert acts.layers == [1]


def test_stops_after_the_deepest_hook(tiny):
    before = count_hooks(tiny)
    fired = []
    spy = [(name, lambda x, hook: fired.append(hook.name)) for name in ("blocks.2.hook_resid_pre", "unembed.hook_in")]
    with tiny.hooks(fwd_hooks=spy):
        steerlens.capture(tiny, PROMPTS, "blocks.0.hook_resid_post", progress=False)
        assert fired == []
        steerlens.capture(tiny, PROMPTS, "blocks.2.hook_resid_post", batch_size=5, progress=False)
        assert "unembed.hook_in" not in fired and len(fired) == 1  # block 2 ran, the unembedding did not
        fired.clear()
        tiny(PROMPTS[0])
        assert len(fired) == 2  # the spies do fire in a normal forward
    assert count_hooks(tiny) == before


def test_hooks_removed_after_an_exception(tiny):
    before = count_hooks(tiny)
    with pytest.raises(ValueError, match="outside prompt"):
        # the second batch holds an out-of-range position: the first batch already ran
        steerlens.capture(tiny, PROMPTS, "resid_post", pool=[0, 0, 0, 0, 99], batch_size=2, progress=False)
    assert count_hooks(tiny) == before


def test_labels_and_rows(tiny):
    acts = steerlens.capture(tiny, PROMPTS, "resid_post", layers=-1, labels=[1, 0, 1, 0, 1],
                             rows=[{"id": i} for i in range(5)], progress=False)
    assert acts.labels.tolist() == [1, 0, 1, 0, 1]
    assert acts.rows[2] == {"id": 2, "prompt": PROMPTS[2], "label": 1}
    assert acts.info["fingerprint"] == steerlens.fingerprint(tiny)
    assert acts.hooks == ["blocks.2.hook_resid_post"]


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(prompts=[]), ValueError, "empty"),
        (dict(prompts=["ok", ""]), ValueError, "empty string"),
        (dict(prompts=["x" * 400]), ValueError, "longer than the model's context"),
        (dict(hooks="resid_pst"), ValueError, "Close matches: \\['resid_post'"),
        (dict(hooks="blocks.7.hook_resid_post"), ValueError, "3 layers"),
        (dict(layers=[5]), ValueError, "out of range"),
        (dict(pool="max"), ValueError, "pool must be"),
        (dict(pool=[0]), ValueError, "1 positions for 2 prompts"),
        (dict(pool=[(3, 1), 0]), ValueError, "not a span"),
        (dict(labels=[1]), ValueError, "labels has 1"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(hooks="blocks.0.attn.hook_pattern"), ValueError, "attention patterns"),
    ],
)
def test_bad_input(tiny, kwargs, err, match):
    before = count_hooks(tiny)
    args = dict(prompts=["hello", "world!"], hooks="resid_post") | kwargs
    with pytest.raises(err, match=match):
        steerlens.capture(tiny, args.pop("prompts"), args.pop("hooks"), progress=False, **args)
    assert count_hooks(tiny) == before


def test_stream_to_disk_equals_in_memory(tiny, tmp_path):
    out = tmp_path / "acts"
    streamed = steerlens.capture(tiny, PROMPTS, "resid_post", pool="all", batch_size=2, out=out, progress=False)
    memory = steerlens.capture(tiny, PROMPTS, "resid_post", pool="all", batch_size=2, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"] + [f"shard-0000{i}.safetensors" for i in range(3)]
    for h in memory.hooks:
        torch.testing.assert_close(streamed[h], memory[h])
    torch.testing.assert_close(streamed.tokens(memory.hooks[0], 2), memory.tokens(memory.hooks[0], 2))
    assert Activations.load(out).rows == memory.rows


def test_interrupted_stream_leaves_nothing(tiny, tmp_path):
    out = tmp_path / "acts"
    with pytest.raises(ValueError):
        steerlens.capture(tiny, PROMPTS, "resid_post", pool=[0, 0, 0, 0, 99], batch_size=2, out=out, progress=False)
    assert list(tmp_path.iterdir()) == []
    # an existing result survives a failed rewrite
    steerlens.capture(tiny, PROMPTS, "resid_post", batch_size=2, out=out, progress=False)
    with pytest.raises(ValueError, match="outside prompt"):
        steerlens.capture(tiny, PROMPTS, "resid_post", pool=[0, 0, 0, 0, 99], batch_size=2, out=out,
                          overwrite=True, progress=False)
    assert len(Activations.load(out)) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["acts"]


def test_stream_refuses_to_replace_before_any_forward_pass(tiny, tmp_path, monkeypatch):
    from steerlens import capturing

    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "src" / "main.py").write_text("print('hi')\n")
    (proj / "NOTES.md").write_text("notes\n")
    acts = tmp_path / "acts"
    steerlens.capture(tiny, PROMPTS, "resid_post", layers=[0], out=acts, progress=False)

    def no_forward(*a, **k):
        raise AssertionError("the forward passes ran before the output path was checked")

    monkeypatch.setattr(capturing, "_run", no_forward)
    for out in (proj, acts):
        with pytest.raises(FileExistsError, match=f"{out} already exists.*overwrite=True"):
            steerlens.capture(tiny, PROMPTS, "resid_post", out=out, progress=False)
    with pytest.raises(ValueError, match=f"{proj} is not a steerlens activations directory"):
        steerlens.capture(tiny, PROMPTS, "resid_post", out=proj, overwrite=True, progress=False)
    assert (proj / "src" / "main.py").read_text() == "print('hi')\n" and (proj / "NOTES.md").is_file()
    monkeypatch.undo()
    replaced = steerlens.capture(tiny, PROMPTS, "resid_post", layers=[1], out=acts, overwrite=True, progress=False)
    assert replaced.hooks == Activations.load(acts).hooks == ["blocks.1.hook_resid_post"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acts", "proj"]
