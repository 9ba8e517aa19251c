"""SteeringVector: arithmetic, storage, compatibility checks."""

import math
import re

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


def test_random_like_shaped_like_the_activations():
    from steerlens.activations import Activations

    # activations varying only in the first 3 of 64 dimensions, around an offset: the shaped control
    # lies in that span (the mean is removed), the isotropic one mostly outside it
    g = torch.Generator().manual_seed(0)
    x = {f"blocks.{layer}.hook_resid_post": 5.0 + torch.cat([torch.randn(40, 3, generator=g), torch.zeros(40, 61)], 1)
         for layer in (1, 2)}
    acts = Activations(x, [{"prompt": str(i)} for i in range(40)], lengths=[1] * 40, pool="mean")
    a = vec(0, hook="resid_post")
    shaped, iso = a.random_like(0, acts=acts), a.random_like(0)
    for layer in a.layers:
        assert math.isclose(shaped.norms()[layer], a.norms()[layer], rel_tol=1e-5)
        assert float(shaped[layer][3:].abs().max()) < 1e-4 * shaped.norms()[layer]
        assert float(iso[layer][3:].norm()) > 0.9 * iso.norms()[layer]
    assert shaped.info["shape"] == "activations" and iso.info["shape"] == "isotropic"
    assert torch.equal(a.random_like(0, acts=acts)[1], shaped[1]) and not torch.equal(a.random_like(1, acts=acts)[1], shaped[1])
    with pytest.raises(ValueError, match="no 'resid_post' activations at layer 3"):
        vec(0, layers=(3,), hook="resid_post").random_like(0, acts=acts)


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


# -- files that are not (valid) steering vectors ---------------------------------------------------
def _hf_weights():
    """A real HF model.safetensors (the tiny model's), whose metadata is {"format": "pt"}."""
    model = steerlens.tiny_model(n_layers=3, d_model=64, seed=0)
    from steerlens.models import cache_dir

    return cache_dir() / "tiny" / model.cfg.model_name / "model.safetensors"


def _rewrite(path, tensors=None, **meta):
    """The vector file at ``path`` again, with tensors and metadata keys replaced."""
    from steerlens.io import load_tensors, save_tensors

    t, m = load_tensors(path)
    out = path.with_name("bad.safetensors")
    save_tensors(out, t if tensors is None else tensors, {**m, **meta})
    return out


def test_load_rejects_truncated_and_foreign_safetensors(tmp_path):
    from safetensors.torch import save_file

    path = vec(0).save(tmp_path / "v.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=re.escape(f"{cut} is not a readable steerlens steering vector")):
        SteeringVector.load(cut)
    hf = _hf_weights()
    with pytest.raises(ValueError, match=re.escape(f"{hf} is not a readable steerlens steering vector: metadata 'format'")):
        SteeringVector.load(hf)
    save_file({"layer.1": torch.zeros(4)}, str(tmp_path / "plain.safetensors"))  # no metadata at all
    with pytest.raises(ValueError, match=r"plain.safetensors is not a steerlens steering vector \(metadata format None"):
        SteeringVector.load(tmp_path / "plain.safetensors")
    save_file({"layer.1": torch.zeros(4)}, str(tmp_path / "j.safetensors"),
              metadata={"format": '"steerlens.steering_vector"', "layers": "[1,"})
    with pytest.raises(ValueError, match=r"j.safetensors is not a readable .*metadata 'layers' is not valid JSON"):
        SteeringVector.load(tmp_path / "j.safetensors")


@pytest.mark.parametrize("meta, match", [
    (dict(layers=[1, "a"]), r"metadata 'layers' must be a non-empty list of distinct non-negative integers, got \[1, 'a'\]"),
    (dict(layers="1,2"), r"metadata 'layers' must be .*, got '1,2'"),
    (dict(layers=[]), r"metadata 'layers' must be a non-empty list"),
    (dict(coeff="2.0"), r"metadata 'coeff' must be a number or null, got '2.0'"),
    (dict(coeff=True), r"metadata 'coeff' must be a number or null, got True"),
    (dict(hook=3), r"metadata 'hook' must be a string, got 3"),
    (dict(method=None), r"metadata 'method' must be a string, got None"),
    (dict(info=[1]), r"metadata 'info' must be a JSON object, got \[1\]"),
    (dict(d_model="64"), r"metadata 'd_model' must be a positive integer, got '64'"),
    (dict(version="2"), r"metadata 'version' must be a positive integer, got '2'"),
    (dict(version=9), r"format version 9; this steerlens reads <= 1"),
    (dict(d_model=32), r"tensor 'layer.1' has shape \(64,\), but metadata layers \[1, 2\] and d_model 32 needs \(32,\)"),
    (dict(layers=[1, 3]), r"tensors do not match metadata layers \[1, 3\] .*missing \['layer.3'\], unexpected \['layer.2'\]"),
    (dict(coeff=float("inf")), r"coeff must be finite"),
])
def test_load_rejects_bad_metadata_naming_the_file(tmp_path, meta, match):
    bad = _rewrite(vec(0).save(tmp_path / "v.safetensors"), **meta)
    with pytest.raises(ValueError, match=f"{re.escape(str(bad))}.*{match}"):
        SteeringVector.load(bad)


def test_load_rejects_tensors_that_do_not_match_the_metadata(tmp_path):
    path = vec(0).save(tmp_path / "v.safetensors")
    g = torch.Generator().manual_seed(0)
    cases = [
        ({"layer.1": torch.zeros(64), "layer.x": torch.zeros(64)}, r"missing \['layer.2'\], unexpected \['layer.x'\]"),
        ({"layer.1": torch.zeros(64), "layer.2": torch.zeros(8, 8)}, r"tensor 'layer.2' has shape \(8, 8\)"),
        ({"layer.1": torch.zeros(64), "layer.2": torch.full((64,), float("nan"))}, "layer 2 holds NaN or inf"),
        ({"layer.1": torch.randn(64, generator=g)}, r"missing \['layer.2'\]"),
    ]
    for tensors, match in cases:
        bad = _rewrite(path, tensors)
        with pytest.raises(ValueError, match=f"{re.escape(str(bad))}: .*{match}"):
            SteeringVector.load(bad)
