"""Probe files: round trip, metadata, wrong width / wrong model errors."""

import numpy as np
import pytest
import torch

import steerlens
from probes import LDAProbe, LogisticProbe, MeanDiffProbe, load_probe, save_probe

HOOK = "blocks.1.hook_resid_post"


def fitted(cls, d=64, seed=0):
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], 40)
    X = rng.standard_normal((80, d)).astype(np.float32) + np.outer(y, np.ones(d, dtype=np.float32))
    return cls().fit(X, y), X


@pytest.mark.parametrize("cls", [LogisticProbe, MeanDiffProbe, LDAProbe])
def test_round_trip(cls, tiny, tmp_path):
    probe, X = fitted(cls)
    path = save_probe(tmp_path / "p.safetensors", probe, model=tiny, hook=HOOK, dataset="toy", dataset_hash="abc",
                      metrics={"test": {"auroc": 0.9}})
    loaded = load_probe(path, model=tiny)
    assert type(loaded) is cls and loaded.get_params() == probe.get_params()
    np.testing.assert_array_equal(loaded.decision_function(X), probe.decision_function(X))
    np.testing.assert_array_equal(loaded.predict_proba(X), probe.predict_proba(X))
    torch.testing.assert_close(loaded.direction, probe.direction)
    assert list(loaded.classes_) == [0, 1]
    m = loaded.meta_
    assert m["hook"] == HOOK and m["layer"] == 1 and m["dataset"] == "toy" and m["dataset_hash"] == "abc"
    assert m["fingerprint"] == steerlens.fingerprint(tiny) and m["method"] in ("logistic", "mean_diff", "lda")
    assert m["metrics"] == {"test": {"auroc": 0.9}} and m["width"] == 64
    if cls is LogisticProbe:
        assert loaded.C_ == probe.C_


def test_wrong_width_and_wrong_model(tiny, tmp_path):
    probe, _ = fitted(LogisticProbe)
    path = save_probe(tmp_path / "p.safetensors", probe, model=tiny, hook=HOOK)
    narrow = steerlens.tiny_model(n_layers=3, d_model=32, seed=0)
    with pytest.raises(ValueError, match=r"width 64 does not match .*\(width 32\)"):
        load_probe(path, model=narrow)
    with pytest.raises(ValueError, match="width 64 does not match"):
        load_probe(path, model=narrow, force=True)  # force never fixes a width
    other = steerlens.tiny_model(n_layers=3, d_model=64, seed=1)
    with pytest.raises(ValueError, match="fingerprint .*force=True"):
        load_probe(path, model=other)
    with pytest.warns(UserWarning, match="used anyway"):
        assert load_probe(path, model=other, force=True).meta_["hook"] == HOOK
    with pytest.raises(ValueError, match="width 32"):
        save_probe(tmp_path / "q.safetensors", fitted(LogisticProbe, d=32)[0], model=tiny, hook=HOOK)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_probe(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable"):
        load_probe(junk)
    from steerlens.io import save_tensors

    save_tensors(tmp_path / "v.safetensors", {"x": torch.zeros(3)}, {"format": "steerlens.vector"})
    with pytest.raises(ValueError, match="not a steerlens probe"):
        load_probe(tmp_path / "v.safetensors")
    with pytest.raises(ValueError, match="not fitted"):
        save_probe(tmp_path / "u.safetensors", LogisticProbe())
