"""Probe estimators on synthetic Gaussian data: direction recovery, sklearn contract, bad input."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.estimator_checks import check_estimator
from threadpoolctl import threadpool_limits

from probes import LDAProbe, LogisticProbe, MeanDiffProbe
from probes.metrics import auroc

PROBES = [LogisticProbe, MeanDiffProbe, LDAProbe]


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """These small fits run fastest single-threaded (and many times faster on a busy machine)."""
    with threadpool_limits(limits=1):
        yield


def gaussian(n=600, d=32, sep=1.5, seed=0, cov=None):
    """Two Gaussian classes with means ±sep/2 along a random unit direction ``w``."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(d)
    w /= np.linalg.norm(w)
    y = rng.integers(0, 2, n)
    noise = rng.standard_normal((n, d)) if cov is None else rng.multivariate_normal(np.zeros(d), cov, n)
    X = noise + np.outer(y - 0.5, w) * sep + 3.0  # offset: centering matters
    return X.astype(np.float32), y, w


def cos(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("cls", PROBES)
def test_recovers_direction_and_separates(cls):
    X, y, w = gaussian()
    p = cls().fit(X[:400], y[:400])
    assert cos(p.direction, w) > 0.9
    assert auroc(y[400:], p.decision_function(X[400:])) > 0.8
    assert p.score(X[400:], y[400:]) > 0.7


def test_lda_undoes_anisotropic_noise():
    """With correlated noise, Σ⁻¹Δμ (LDA) is the Bayes direction; mass-mean is not."""
    d = 16
    rng = np.random.default_rng(1)
    A = rng.standard_normal((d, d))
    cov = A @ A.T + 0.1 * np.eye(d)
    X, y, w = gaussian(n=4000, d=d, sep=2.0, cov=cov)
    bayes = np.linalg.solve(cov, w)
    lda = LDAProbe().fit(X, y)
    assert cos(lda.direction, bayes) > 0.9
    assert cos(MeanDiffProbe().fit(X, y).direction, w) > 0.9


@pytest.mark.parametrize("cls", PROBES)
def test_linear_and_probabilistic_outputs(cls):
    X, y, _ = gaussian(n=200)
    p = cls().fit(X, y)
    z = p.decision_function(X)
    np.testing.assert_allclose(z, X.astype(np.float64) @ p.coef_[0] + p.intercept_[0], rtol=1e-4, atol=1e-4)
    proba = p.predict_proba(X)
    assert proba.shape == (200, 2) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-6)
    np.testing.assert_array_equal(p.predict(X), p.classes_[(z > 0).astype(int)])
    d = p.direction
    assert isinstance(d, torch.Tensor) and d.dtype == torch.float32 and d.shape == (32,)
    assert abs(float(d.norm()) - 1) < 1e-5
    assert p.coef_.dtype == np.float32


@pytest.mark.parametrize("cls", PROBES)
def test_torch_input_and_string_labels(cls):
    X, y, _ = gaussian(n=200)
    labels = np.where(y == 1, "true", "false")
    p = cls().fit(torch.from_numpy(X).to(torch.bfloat16), labels)
    assert list(p.classes_) == ["false", "true"]
    assert set(p.predict(torch.from_numpy(X))) <= {"false", "true"}


def test_standardisation_is_fitted_on_training_data_only():
    X, y, _ = gaussian(n=300)
    p = LogisticProbe(C=1.0).fit(X[:200], y[:200])
    np.testing.assert_allclose(p.mean_, X[:200].mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p.scale_, X[:200].std(0), rtol=1e-4)


def test_logistic_chooses_C_by_cross_validation():
    X, y, _ = gaussian(n=300, sep=1.0)
    p = LogisticProbe(Cs=(1e-4, 1e-2, 1.0)).fit(X, y, groups=np.arange(300) // 2)
    assert p.C_ in (1e-4, 1e-2, 1.0) and set(p.cv_scores_) == {1e-4, 1e-2, 1.0}
    assert p.C_ == min(p.cv_scores_, key=p.cv_scores_.get)
    assert LogisticProbe(C=0.5).fit(X, y).C_ == 0.5


@pytest.mark.parametrize("cls", PROBES)
def test_sklearn_clone_cross_val_and_pipeline(cls):
    X, y, _ = gaussian(n=300)
    est = cls()
    c = clone(est)
    assert c.get_params() == est.get_params() and not hasattr(c, "coef_")
    scores = cross_val_score(cls(), X, y, cv=3, scoring="roc_auc")
    assert scores.shape == (3,) and scores.min() > 0.7
    pipe = make_pipeline(FunctionTransformer(lambda a: a * 2.0), cls()).fit(X, y)
    assert pipe.score(X, y) > 0.7


@pytest.mark.parametrize("cls", PROBES)
def test_sklearn_check_estimator(cls):
    """Every scikit-learn estimator check passes (array-API checks skip without SCIPY_ARRAY_API)."""
    est = cls(Cs=(0.1, 1.0), cv=2) if cls is LogisticProbe else cls()  # a short C grid keeps it quick
    results = check_estimator(est, on_fail=None)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    assert not failed


@pytest.mark.parametrize("cls", PROBES)
def test_bad_inputs_raise_clear_errors(cls):
    X, y, _ = gaussian(n=50)
    with pytest.raises(ValueError, match="only one class"):
        cls().fit(X, np.ones(50))
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        cls().fit(X, y[:40])
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cls().fit(bad, y)
    bad[3, 2] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        cls().fit(bad, y)
    with pytest.raises(ValueError, match="0 sample"):
        cls().fit(X[:0], y[:0])
    with pytest.raises(ValueError, match="binary"):
        cls().fit(X, np.arange(50) % 3)
    p = cls().fit(X, y)
    with pytest.raises(ValueError, match="features"):
        p.decision_function(X[:, :10])


def test_parameter_errors():
    X, y, _ = gaussian(n=50)
    with pytest.raises(ValueError, match="shrinkage"):
        LDAProbe(shrinkage=2.0).fit(X, y)
    with pytest.raises(ValueError, match="C must be"):
        LogisticProbe(C=-1.0).fit(X, y)
    with pytest.raises(ValueError, match="Cs must be"):
        LogisticProbe(Cs=()).fit(X, y)
    assert 0 <= LDAProbe().fit(X, y).shrinkage_ <= 1
    assert LDAProbe(shrinkage=0.3).fit(X, y).shrinkage_ == 0.3
