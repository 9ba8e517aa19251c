"""Metrics against scikit-learn's own, bootstrap determinism, and grouped splits."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from probes import grouped_split
from probes import metrics as M


def random_scores(n=300, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = rng.standard_normal(n) + 0.8 * y
    return y, (np.round(s, 1) if ties else s)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn(seed, ties):
    y, s = random_scores(seed=seed, ties=ties)
    assert M.auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("fpr", [0.0, 0.01, 0.05, 0.2])
@pytest.mark.parametrize("ties", [False, True])
def test_tpr_at_fpr_matches_roc_curve(fpr, ties):
    y, s = random_scores(n=1000, ties=ties)
    f, t, _ = roc_curve(y, s)
    assert M.tpr_at_fpr(y, s, fpr) == pytest.approx(t[f <= fpr].max())


def test_tpr_at_fpr_separable_and_chance():
    y = np.array([0, 0, 0, 1, 1, 1])
    assert M.tpr_at_fpr(y, np.array([0, 1, 2, 3, 4, 5.0]), 0.01) == 1.0
    assert M.tpr_at_fpr(y, np.array([5, 4, 3, 2, 1, 0.0]), 0.01) == 0.0


def test_calibration_error():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=200_000)
    y = (rng.uniform(size=p.size) < p).astype(int)  # calibrated by construction
    assert M.calibration_error(y, p) < 0.01
    # all predictions 0.9 for a 50/50 outcome: ECE = 0.4
    assert M.calibration_error(np.array([0, 1] * 50), np.full(100, 0.9)) == pytest.approx(0.4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.calibration_error(np.array([0, 1]), np.array([0.5, 1.5]))


def test_accuracy():
    assert M.accuracy(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0])) == 0.75


def test_bootstrap_ci_contains_estimate_and_is_seeded():
    y, s = random_scores(n=200)
    lo, hi = M.bootstrap_ci(y, s, n_boot=500, seed=3)
    assert lo <= M.auroc(y, s) <= hi and hi - lo < 0.3
    assert M.bootstrap_ci(y, s, n_boot=500, seed=3) == (lo, hi)
    assert M.bootstrap_ci(y, s, n_boot=500, seed=4) != (lo, hi)
    alo, ahi = M.bootstrap_ci(y, s, metric="accuracy", n_boot=200, seed=0)
    assert 0 <= alo <= M.accuracy(y, (s > 0).astype(int)) <= ahi <= 1


def test_metric_errors():
    y, s = random_scores(n=20)
    with pytest.raises(ValueError, match="both classes"):
        M.auroc(np.ones(20, dtype=int), s)
    with pytest.raises(ValueError, match="entries"):
        M.auroc(y, s[:10])
    with pytest.raises(ValueError, match="NaN"):
        M.auroc(y, np.where(np.arange(20) == 3, np.nan, s))
    with pytest.raises(ValueError, match="empty"):
        M.auroc(y[:0], s[:0])
    with pytest.raises(ValueError, match="0/1"):
        M.auroc(y + 1, s)
    with pytest.raises(ValueError, match="metric"):
        M.bootstrap_ci(y, s, metric="f1")


def test_grouped_split_keeps_groups_together():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(150), rng.integers(1, 5, 150))
    y = rng.integers(0, 2, len(groups))
    parts = grouped_split(y, groups, fractions=(0.6, 0.2, 0.2), seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(y)))  # a partition
    sets = [set(groups[p]) for p in parts]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    for p, frac in zip(parts, (0.6, 0.2, 0.2)):
        assert abs(len(p) / len(y) - frac) < 0.05
        assert set(y[p]) == {0, 1}
    again = grouped_split(y, groups, fractions=(0.6, 0.2, 0.2), seed=0)
    assert all((a == b).all() for a, b in zip(parts, again))
    other = grouped_split(y, groups, fractions=(0.6, 0.2, 0.2), seed=1)
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(parts, other))


def test_grouped_split_errors():
    y = np.array([0, 1] * 10)
    assert len(grouped_split(y, None, fractions=(0.5, 0.5))) == 2
    with pytest.raises(ValueError, match="empty"):
        grouped_split(y[:0])
    with pytest.raises(ValueError, match="groups has"):
        grouped_split(y, np.arange(5))
    with pytest.raises(ValueError, match="cannot fill"):
        grouped_split(y, np.zeros(20), fractions=(0.5, 0.5))
    with pytest.raises(ValueError, match="all 2 classes"):
        grouped_split(y, y, fractions=(0.5, 0.5))  # each class one group: a split lacks a class
    with pytest.raises(ValueError, match="fractions"):
        grouped_split(y, None, fractions=(1.0,))
