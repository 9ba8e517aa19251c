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
    make().select(layers=[0]).save(tmp_path / "a")
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
