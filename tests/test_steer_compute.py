"""Vector computation: closed forms on synthetic activations, and the one-call path on the tiny model."""

import numpy as np
import pytest
import torch

import steerlens
from steer import computing as compute
from steerlens.activations import Activations

HOOK = "blocks.1.hook_resid_post"


def acts(x, labels=None, fingerprint="fp"):
    rows = [{} if labels is None else {"label": int(y)} for y in (labels if labels is not None else range(len(x)))]
    return Activations({HOOK: x}, rows, lengths=[1] * len(x), pool="last",
                       info={"model": "synthetic", "fingerprint": fingerprint})


@pytest.fixture
def pairs():
    g = torch.Generator().manual_seed(0)
    d = 32
    direction = torch.randn(d, generator=g)
    neg = torch.randn(40, d, generator=g) * 2.0
    pos = neg + 3.0 * direction / direction.norm() + 0.1 * torch.randn(40, d, generator=g)
    return pos, neg, direction / direction.norm()


def test_mean_diff_is_the_difference_of_means(pairs):
    pos, neg, _ = pairs
    v = compute.mean_diff(acts(pos), acts(neg))
    torch.testing.assert_close(v[1], pos.mean(0) - neg.mean(0))
    assert v.method == "mean_diff" and v.model_name == "synthetic" and v.fingerprint == "fp"
    # one labelled set gives the same vector
    both = acts(torch.cat([pos, neg]), labels=[1] * 40 + [0] * 40)
    torch.testing.assert_close(compute.mean_diff(both)[1], v[1])


def test_pca_recovers_direction_sign_and_scale(pairs):
    pos, neg, u = pairs
    v = compute.pca(acts(pos), acts(neg))
    cos = float(v[1] @ u / v[1].norm())
    assert cos > 0.99  # sign fixed: positives project higher
    d = pos - neg
    assert abs(float(v[1].norm()) - float((d @ (v[1] / v[1].norm())).mean())) < 1e-4
    flipped = compute.pca(acts(neg), acts(pos))
    assert float(flipped[1] @ u) < 0
    vc = compute.pca(acts(pos), acts(neg), center=True)
    assert float(vc[1] @ u) > 0  # the sign rule holds for the centred variant too


def test_pca_needs_pairs(pairs):
    pos, neg, _ = pairs
    with pytest.raises(ValueError, match="pairs"):
        compute.pca(acts(pos), acts(neg[:10]))


class FakeProbe:
    def __init__(self, d):
        self.direction = torch.ones(d) * 3


def test_from_probe(pairs):
    pos, neg, _ = pairs
    v = compute.from_probe(FakeProbe(32), 1)
    assert abs(v.norms()[1] - 1) < 1e-6 and v.method == "probe"
    s = compute.from_probe({1: FakeProbe(32)}, positive=acts(pos), negative=acts(neg))
    u = torch.ones(32) / 32**0.5
    torch.testing.assert_close(s[1], u * float((pos.mean(0) - neg.mean(0)) @ u))
    with pytest.raises(ValueError, match="layer"):
        compute.from_probe(FakeProbe(32))
    with pytest.raises(TypeError, match="direction"):
        compute.from_probe(object(), 1)


def test_input_errors(pairs):
    pos, neg, _ = pairs
    with pytest.raises(ValueError, match="both"):
        compute.mean_diff(acts(pos, labels=[1] * 40))
    with pytest.raises(ValueError, match="layer 4"):
        compute.mean_diff(acts(pos), acts(neg), layers=[4])
    with pytest.raises(ValueError, match="different models"):
        compute.mean_diff(acts(pos), acts(neg, fingerprint="other"))


def test_compute_and_actadd_on_tiny(tiny):
    pairs = [("I love this, it is great", "I hate this, it is awful"), ("good day", "bad day"),
             ("what a lovely film", "what a terrible film")]
    v = compute.compute(tiny, pairs, layers=[1, 2], method="mean_diff")
    assert v.layers == [1, 2] and v.d_model == 64
    assert v.fingerprint == steerlens.fingerprint(tiny) and v.info["n_pairs"] == 3 and v.info["pool"] == "mean"
    pos = steerlens.capture(tiny, [p for p, _ in pairs], "resid_post", layers=[1], pool="mean", progress=False)
    neg = steerlens.capture(tiny, [n for _, n in pairs], "resid_post", layers=[1], pool="mean", progress=False)
    torch.testing.assert_close(v[1], pos.at(1).mean(0) - neg.at(1).mean(0))
    p = compute.compute(tiny, [{"positive": a, "negative": b} for a, b in pairs], layers=1, method="pca")
    assert p.method == "pca" and float(torch.nn.functional.cosine_similarity(p[1], v[1], dim=0)) > 0
    a = compute.actadd(tiny, "Love", "Hate", layers=[2])
    ca = steerlens.capture(tiny, ["Love", "Hate"], "resid_post", layers=[2], pool="last", progress=False)
    torch.testing.assert_close(a[2], ca.at(2)[0] - ca.at(2)[1])
    with pytest.raises(ValueError, match="method"):
        compute.compute(tiny, pairs, layers=[1], method="lda")
    with pytest.raises(TypeError, match="pair"):
        compute.compute(tiny, ["just one string"], layers=[1])
    with pytest.raises(ValueError, match="out of range"):
        compute.compute(tiny, pairs, layers=[7])


def test_compute_from_a_shipped_dataset(tiny):
    data = pytest.importorskip("steerlens.data")
    if not hasattr(data, "digest"):
        pytest.skip("steerlens.data is not built yet")
    v = compute.compute(tiny, "sentiment", layers=[1], batch_size=64)
    assert v.dataset == "sentiment" and v.dataset_hash == data.digest("sentiment")
    assert v.info["n_pairs"] == len(data.load("sentiment"))
    assert np.isfinite(v[1].numpy()).all()
