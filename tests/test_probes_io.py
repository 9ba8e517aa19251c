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
    assert m.get("pool") is None  # fitted by hand: no pooling known


def test_the_pooling_a_probe_was_fitted_on_is_saved(tiny, tmp_path):
    probe, _ = fitted(LogisticProbe)
    path = save_probe(tmp_path / "p.safetensors", probe, hook=HOOK, pool="mean")
    assert load_probe(path).meta_["pool"] == "mean"
    probe.meta_ = {"pool": "last"}  # as sweep_layers records it
    assert load_probe(save_probe(tmp_path / "q.safetensors", probe)).meta_["pool"] == "last"
    with pytest.raises(ValueError, match="pool must be"):
        save_probe(tmp_path / "r.safetensors", probe, pool="max")


def test_wrong_width_and_wrong_model(tiny, tmp_path):
    probe, _ = fitted(LogisticProbe)
    path = save_probe(tmp_path / "p.safetensors", probe, model=tiny, hook=HOOK)
    narrow = steerlens.tiny_model(n_layers=3, d_model=32, seed=0)
    with pytest.raises(ValueError, match=r"has width 64 \(it does not match d_model 32 .*blocks.1.hook_resid_post"):
        load_probe(path, model=narrow)
    with pytest.raises(ValueError, match="has width 64 \\(it does not match"):
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


def _rewrite(path, tensors=None, drop=(), **meta):
    from steerlens.io import load_tensors, save_tensors

    t, m = load_tensors(path)
    m = {k: v for k, v in {**m, **meta}.items() if k not in drop}
    out = path.with_name("bad.safetensors")
    save_tensors(out, t if tensors is None else tensors, m)
    return out


def test_truncated_and_foreign_files_name_the_file(tmp_path):
    import re

    from steerlens.models import cache_dir

    path = save_probe(tmp_path / "p.safetensors", fitted(LogisticProbe)[0])
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=re.escape(f"{cut} is not a readable steerlens probe")):
        load_probe(cut)
    model = steerlens.tiny_model(n_layers=3, d_model=64, seed=0)
    hf = cache_dir() / "tiny" / model.cfg.model_name / "model.safetensors"
    with pytest.raises(ValueError, match=re.escape(f"{hf} is not a readable steerlens probe: metadata 'format'")):
        load_probe(hf)


@pytest.mark.parametrize("change, match", [
    (dict(width="64"), r"metadata 'width' must be a positive integer, got '64'"),
    (dict(width=32), r"tensor 'coef' has shape \(1, 64\), but metadata width 32 needs \(1, 32\)"),
    (dict(classes=[0, 1, 2]), r"metadata 'classes' must be a list of two class labels"),
    (dict(params=[1]), r"metadata 'params' must be a JSON object"),
    (dict(method=1), r"metadata 'method' must be a string, got 1"),
    (dict(method="svm"), r"method must be one of \['lda', 'logistic', 'mean_diff'\], got 'svm'"),
    (dict(params={"depth": 3}), r"unexpected keyword argument 'depth'"),
    (dict(layer="1"), r"metadata 'layer' must be an integer or null, got '1'"),
    (dict(hook=5), r"metadata 'hook' must be a string or null, got 5"),
    (dict(drop=("params",)), r"the probe metadata lacks \['params'\]"),
    (dict(tensors={"coef": torch.zeros(1, 64)}), r"missing \['direction', 'intercept', 'mean', 'scale'\]"),
])
def test_bad_metadata_and_tensors_name_the_file(tmp_path, change, match):
    import re

    path = save_probe(tmp_path / "p.safetensors", fitted(LogisticProbe)[0], hook=HOOK)
    bad = _rewrite(path, **change)
    with pytest.raises(ValueError, match=f"{re.escape(str(bad))}: .*{match}"):
        load_probe(bad)
