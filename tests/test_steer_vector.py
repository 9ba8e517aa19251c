"""SteeringVector: arithmetic, storage, compatibility checks."""

import math

import pytest
import torch

import steerlens
from steer.vector import SteeringVector


def vec(seed=0, layers=(1, 2), d=64, **kw):
    g = torch.Generator().manual_seed(seed)
    return SteeringVector({layer: torch.randn(d, generator=g) for layer in layers}, **kw)


def test_arithmetic():
    a, b = vec(0), vec(1, layers=(2, 3))
    s = a + b
    assert s.layers == [1, 2, 3]
    torch.testing.assert_close(s[2], a[2] + b[2])
    torch.testing.assert_close(s[3], b[3])
    torch.testing.assert_close((a - b)[3], -b[3])
    torch.testing.assert_close((2 * a)[1], 2 * a[1])
    torch.testing.assert_close((a * 2)[1], 2 * a[1])
    torch.testing.assert_close((a / 4)[1], a[1] / 4)
    torch.testing.assert_close((-a)[2], -a[2])
    assert math.isclose(a.normalized().norms()[1], 1.0, rel_tol=1e-6)
    assert a.scale(3).coeff is None


def test_orthogonalize():
    a, b = vec(0), vec(1)
    o = a.orthogonalize(b)
    for layer in a.layers:
        assert abs(float(o[layer] @ b[layer])) < 1e-4
    # the part of a orthogonal to b is untouched
    u = b[1] / b[1].norm()
    torch.testing.assert_close(o[1], a[1] - (a[1] @ u) * u)


def test_random_like_same_norm_and_seeded():
    a = vec(0)
    r1, r2, r3 = a.random_like(0), a.random_like(0), a.random_like(1)
    for layer in a.layers:
        assert math.isclose(r1.norms()[layer], a.norms()[layer], rel_tol=1e-5)
        assert torch.equal(r1[layer], r2[layer])
        assert not torch.equal(r1[layer], r3[layer])
        assert abs(float(torch.nn.functional.cosine_similarity(r1[layer], a[layer], dim=0))) < 0.5
    assert r1.method == "random"


def test_save_load_round_trip(tmp_path):
    a = vec(0, model_name="m", fingerprint="abc", dataset="sentiment", dataset_hash="h", method="mean_diff")
    a = a.with_coeff(3.5, calibration={"kl": 0.09})
    path = a.save(tmp_path / "v.safetensors")
    b = SteeringVector.load(path)
    assert b.metadata() == a.metadata()
    for layer in a.layers:
        assert torch.equal(a[layer], b[layer])
    assert b.coeff == 3.5 and b.info["calibration"]["kl"] == 0.09


def test_load_rejects_other_files(tmp_path):
    from steerlens.io import save_tensors

    save_tensors(tmp_path / "x.safetensors", {"w": torch.zeros(3)}, {"format": "other"})
    with pytest.raises(ValueError, match="not a steerlens steering vector"):
        SteeringVector.load(tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError):
        SteeringVector.load(tmp_path / "missing.safetensors")


def test_bad_vectors():
    with pytest.raises(ValueError, match="NaN or inf"):
        SteeringVector({1: torch.tensor([1.0, float("nan")])})
    with pytest.raises(ValueError, match="width"):
        SteeringVector({1: torch.zeros(4), 2: torch.zeros(5)})
    with pytest.raises(ValueError, match="at least one layer"):
        SteeringVector({})
    with pytest.raises(ValueError, match="non-negative"):
        SteeringVector({-1: torch.zeros(4)})
    with pytest.raises(ValueError, match="width mismatch"):
        vec(0, d=8) + vec(0, d=16)
    with pytest.raises(ValueError, match="different models"):
        vec(0, fingerprint="a") + vec(1, fingerprint="b")
    with pytest.raises(ValueError, match="finite"):
        vec(0).scale(float("inf"))


def test_check_compatible(tiny):
    fp = steerlens.fingerprint(tiny)
    vec(0, fingerprint=fp).check_compatible(tiny)
    vec(0).check_compatible(tiny)  # no fingerprint: width and layers only
    with pytest.raises(ValueError, match="d_model 64"):
        vec(0, d=32).check_compatible(tiny)
    with pytest.raises(ValueError, match="fingerprint"):
        vec(0, fingerprint="0" * 16).check_compatible(tiny)
    vec(0, fingerprint="0" * 16).check_compatible(tiny, force=True)
    with pytest.raises(ValueError, match="3 layers"):
        vec(0, layers=(5,)).check_compatible(tiny)
