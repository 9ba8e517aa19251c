import json

import numpy as np
import pytest
import torch

from steerlens.activations import Activations


def make(pool="last"):
    g = torch.Generator().manual_seed(0)
    lengths = [3, 1, 2]
    n = sum(lengths) if pool == "all" else 3
    tensors = {
        "blocks.0.hook_resid_post": torch.randn(n, 4, generator=g),
        "blocks.1.hook_resid_post": torch.randn(n, 4, generator=g),
        "blocks.1.mlp.hook_post": torch.randn(n, 8, generator=g),
    }
    rows = [{"prompt": p, "label": l} for p, l in zip("abc", [1, 0, 1])]
    return Activations(tensors, rows, lengths=lengths, pool=pool, info={"model": "m", "fingerprint": "f"})


def test_selection():
    acts = make()
    assert acts.layers == [0, 1] and len(acts) == 3
    assert torch.equal(acts.at(0), acts["blocks.0.hook_resid_post"])
    assert torch.equal(acts.at(1, "mlp_post"), acts["blocks.1.mlp.hook_post"])
    with pytest.raises(KeyError, match="expected one hook"):
        acts.at(1)
    assert acts.select(hooks=["resid_post"]).hooks == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert acts.select(layers=[1]).hooks == ["blocks.1.hook_resid_post", "blocks.1.mlp.hook_post"]
    with pytest.raises(KeyError, match="captured"):
        acts["blocks.9.hook_resid_post"]
    x = acts.numpy("blocks.1.mlp.hook_post")
    assert x.dtype == np.float32 and x.shape == (3, 8)
    assert acts.labels.tolist() == [1, 0, 1]


def test_offsets_for_all_tokens():
    acts = make("all")
    assert acts.offsets.tolist() == [0, 3, 4, 6]
    assert torch.equal(acts.tokens("blocks.0.hook_resid_post", 2), acts["blocks.0.hook_resid_post"][4:6])
    with pytest.raises(ValueError, match="only for pool='all'"):
        make().offsets


def test_save_load_roundtrip(tmp_path):
    for pool in ("last", "all"):
        acts = make(pool)
        acts.save(tmp_path / pool)
        back = Activations.load(tmp_path / pool)
        assert back.hooks == acts.hooks and back.rows == acts.rows and back.info == acts.info
        assert back.pool == pool and torch.equal(back.lengths, acts.lengths)
        for h in acts.hooks:
            assert torch.equal(back[h], acts[h])
    assert not list(tmp_path.glob(".*"))  # no temporary leftovers


def test_save_replaces_atomically_and_rejects_incomplete(tmp_path):
    make().save(tmp_path / "a")
    make().select(layers=[0]).save(tmp_path / "a", overwrite=True)
    assert Activations.load(tmp_path / "a").hooks == ["blocks.0.hook_resid_post"]
    (tmp_path / "b").mkdir()
    with pytest.raises(FileNotFoundError, match="not a complete"):
        Activations.load(tmp_path / "b")
    (tmp_path / "b" / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="unsupported format"):
        Activations.load(tmp_path / "b")


def test_rows_and_lengths_must_agree():
    with pytest.raises(ValueError, match="2 rows but 3 lengths"):
        Activations({}, [{}, {}], lengths=[1, 2, 3], pool="last")


def project(tmp_path):
    """A user's directory that must never be deleted."""
    d = tmp_path / "proj"
    (d / "src").mkdir(parents=True)
    (d / "src" / "main.py").write_text("print('hi')\n")
    (d / "NOTES.md").write_text("notes\n")
    return d


def test_save_never_replaces_what_is_not_activations(tmp_path):
    d = project(tmp_path)
    with pytest.raises(FileExistsError, match=f"{d}.*overwrite=True.*--overwrite"):
        make().save(d)
    with pytest.raises(ValueError, match=f"{d} is not a steerlens activations directory"):
        make().save(d, overwrite=True)
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ValueError, match="not a steerlens activations directory"):
        make().save(tmp_path / "file", overwrite=True)
    # an activations directory with anything extra in it is not one any more
    make().save(tmp_path / "acts")
    (tmp_path / "acts" / "NOTES.md").write_text("mine too")
    with pytest.raises(ValueError, match="not a steerlens activations directory"):
        make().save(tmp_path / "acts", overwrite=True)
    (tmp_path / "link").symlink_to(tmp_path / "acts")
    with pytest.raises(ValueError, match="not a steerlens activations directory"):
        make().save(tmp_path / "link", overwrite=True)
    assert (d / "src" / "main.py").read_text() == "print('hi')\n" and (d / "NOTES.md").is_file()
    assert (tmp_path / "file").read_text() == "mine" and (tmp_path / "acts" / "NOTES.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acts", "file", "link", "proj"]


def test_save_into_an_empty_directory_and_over_activations(tmp_path):
    (tmp_path / "a").mkdir()
    make().save(tmp_path / "a")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make().select(layers=[0]).save(tmp_path / "a")
    assert len(Activations.load(tmp_path / "a").hooks) == 3
    make().select(layers=[0]).save(tmp_path / "a", overwrite=True)
    assert Activations.load(tmp_path / "a").hooks == ["blocks.0.hook_resid_post"]
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def edit_manifest(path, **changes):
    m = json.loads((path / "manifest.json").read_text())
    m.update(changes)
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("shard", ["../../etc/passwd", "/etc/passwd", "sub/../../x.safetensors"])
def test_load_refuses_shards_outside_the_directory(tmp_path, shard):
    make().save(tmp_path / "a")
    edit_manifest(tmp_path / "a", shards=[shard])
    with pytest.raises(ValueError, match=f"manifest.json: shard '{shard}' is outside"):
        Activations.load(tmp_path / "a")


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(hooks="blocks.0.hook_resid_post"), "'hooks' must be a list of strings"),
        (dict(shards=[1]), "'shards' must be a non-empty list of strings"),
        (dict(lengths=[1, -1, 1]), "'lengths' must be a list of non-negative ints"),
        (dict(lengths=[1, 1.5, 1]), "'lengths' must be a list of non-negative ints"),
        (dict(rows=["a", "b", "c"]), "'rows' must be a list of objects"),
        (dict(pool=1), "'pool' must be a string"),
        (dict(info=None), "'info' must be an object"),
    ],
)
def test_load_checks_manifest_types(tmp_path, changes, match):
    make().save(tmp_path / "a")
    edit_manifest(tmp_path / "a", **changes)
    with pytest.raises(ValueError, match=match):
        Activations.load(tmp_path / "a")


def test_load_names_a_manifest_that_is_not_json(tmp_path):
    make().save(tmp_path / "a")
    (tmp_path / "a" / "manifest.json").write_text('{"format": "steerlens.activations",')
    with pytest.raises(ValueError, match="manifest.json: not valid JSON"):
        Activations.load(tmp_path / "a")


@pytest.mark.parametrize("pool", ["last", "all"])
def test_load_checks_row_counts(tmp_path, pool):
    make(pool).save(tmp_path / "a")
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    edit_manifest(tmp_path / "a", rows=m["rows"] + [{"prompt": "d"}], lengths=m["lengths"] + [2])
    acts = Activations.load(tmp_path / "a")
    want, got = (8, 6) if pool == "all" else (4, 3)
    hook = "blocks.0.hook_resid_post"
    with pytest.raises(ValueError, match=f"{tmp_path / 'a'}: hook '{hook}' has {got} rows.*says {want}"):
        acts["blocks.0.hook_resid_post"]


@pytest.mark.parametrize("damage", ["missing", "truncated", "no such hook"])
def test_load_names_a_damaged_shard(tmp_path, damage):
    make().save(tmp_path / "a")
    shard = tmp_path / "a" / "shard-00000.safetensors"
    if damage == "missing":
        shard.unlink()
    elif damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:-9])
    else:
        edit_manifest(tmp_path / "a", hooks=["blocks.5.hook_resid_post"])
    acts = Activations.load(tmp_path / "a")
    with pytest.raises(ValueError, match="shard-00000.safetensors"):
        acts[acts.hooks[0]]
