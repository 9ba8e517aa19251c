"""ConceptEraser files that are not (valid) erasers: each load error is a ValueError naming the
file and what is wrong (the steering side of erasers is in test_steer_erase.py)."""

import re

import pytest
import torch

import steerlens
from steer.leace import ConceptEraser
from steer.operators import EraserTensors
from steerlens.io import load_tensors, save_tensors
from steerlens.models import cache_dir


def eraser(d=8, layers=(0, 2)):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(d, 1, generator=g)
    return ConceptEraser({layer: EraserTensors(u, u.T, torch.randn(d, generator=g)) for layer in layers})


def rewrite(path, tensors=None, **meta):
    t, m = load_tensors(path)
    out = path.with_name("bad.safetensors")
    save_tensors(out, t if tensors is None else tensors, {**m, **meta})
    return out


def raises(path, match):
    return pytest.raises(ValueError, match=f"{re.escape(str(path))}:? .*{match}")


def test_round_trip_of_shared_tensors(tmp_path):
    """The same tensors at two layers, and proj_right = proj_leftᵀ (a view), save and load."""
    e = eraser()
    back = ConceptEraser.load(e.save(tmp_path / "e.safetensors"))
    assert back.metadata() == e.metadata() and all(torch.equal(a, b) for a, b in zip(back[2], e[2]))
    from steer.vector import SteeringVector

    t = torch.ones(8)
    v = SteeringVector({1: t, 2: t})
    t += 1  # the vector keeps its own copy
    assert SteeringVector.load(v.save(tmp_path / "v.safetensors"))[2].tolist() == [1.0] * 8


def test_truncated_and_foreign_files(tmp_path):
    path = eraser().save(tmp_path / "e.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:100])
    with raises(cut, "is not a readable steerlens concept eraser"):
        ConceptEraser.load(cut)
    model = steerlens.tiny_model(n_layers=3, d_model=64, seed=0)
    hf = cache_dir() / "tiny" / model.cfg.model_name / "model.safetensors"
    with raises(hf, "is not a readable steerlens concept eraser: metadata 'format' is not valid JSON"):
        ConceptEraser.load(hf)
    from steer.vector import SteeringVector

    v = SteeringVector({1: torch.ones(8)}).save(tmp_path / "v.safetensors")
    with raises(v, r"is not a steerlens concept eraser \(metadata format 'steerlens.steering_vector'"):
        ConceptEraser.load(v)
    with pytest.raises(FileNotFoundError, match="no concept eraser at"):
        ConceptEraser.load(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("meta, match", [
    (dict(layers=[0, 2.0]), r"metadata 'layers' must be a non-empty list of distinct non-negative integers, got \[0, 2.0\]"),
    (dict(layers=[0, 0, 2]), r"metadata 'layers' must be a non-empty list of distinct"),
    (dict(layers=[-1]), r"metadata 'layers' must be"),
    (dict(hook=["resid_post"]), r"metadata 'hook' must be a string"),
    (dict(fingerprint=12), r"metadata 'fingerprint' must be a string or null, got 12"),
    (dict(d_model=16), r"tensor 'layer.0.proj_left' has shape \(8, 1\), but metadata layers \[0, 2\] and d_model 16 needs \(16, 'any'\)"),
    (dict(layers=[0]), r"unexpected \['layer.2.bias', 'layer.2.proj_left', 'layer.2.proj_right'\]"),
    (dict(layers=[0, 1]), r"missing \['layer.1.bias', 'layer.1.proj_left', 'layer.1.proj_right'\]"),
])
def test_bad_metadata(tmp_path, meta, match):
    bad = rewrite(eraser().save(tmp_path / "e.safetensors"), **meta)
    with raises(bad, match):
        ConceptEraser.load(bad)


def test_tensors_that_do_not_match(tmp_path):
    path = eraser().save(tmp_path / "e.safetensors")
    tensors, _ = load_tensors(path)
    without = {k: v for k, v in tensors.items() if k != "layer.2.bias"}
    with raises(rewrite(path, without), r"missing \['layer.2.bias'\], unexpected \[\]"):
        ConceptEraser.load(tmp_path / "bad.safetensors")
    rank2 = {**tensors, "layer.2.proj_right": torch.zeros(2, 8)}
    with raises(rewrite(path, rank2), r"the eraser at layer 2: proj_left \(8, 1\) and proj_right \(2, 8\)"):
        ConceptEraser.load(tmp_path / "bad.safetensors")
    nan = {**tensors, "layer.0.bias": torch.full((8,), float("nan"))}
    with raises(rewrite(path, nan), "the eraser at layer 0 holds NaN or inf"):
        ConceptEraser.load(tmp_path / "bad.safetensors")
