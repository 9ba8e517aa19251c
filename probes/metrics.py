"""Binary-classification metrics as pure functions of ``(y, score)``: ``y`` in {0, 1} (1 = the
positive class, ``classes_[1]``), ``score`` any real number monotone in P(y = 1) (a probability
for ``calibration_error``)."""

from __future__ import annotations

import numpy as np
from jaxtyping import Float, Shaped
from scipy.stats import rankdata


def _check(y, score) -> tuple[np.ndarray, np.ndarray]:
    y, score = np.asarray(y), np.asarray(score, dtype=np.float64)
    if y.ndim != 1 or score.ndim != 1:
        raise ValueError(f"y and score must be 1-D, got shapes {y.shape} and {score.shape}")
    if len(y) != len(score):
        raise ValueError(f"y has {len(y)} entries but score has {len(score)}")
    if len(y) == 0:
        raise ValueError("y and score are empty")
    if not np.isfinite(score).all():
        raise ValueError("score contains NaN or inf")
    values = np.unique(y)
    if not np.isin(values, [0, 1]).all():
        raise ValueError(f"y must hold 0/1 labels, got values {values[:5].tolist()}")
    return y.astype(np.int64), score


def accuracy(y: Shaped[np.ndarray, " n"], pred: Shaped[np.ndarray, " n"]) -> float:
    """Fraction of ``pred == y``."""
    y, pred = np.asarray(y), np.asarray(pred)
    if len(y) != len(pred):
        raise ValueError(f"y has {len(y)} entries but pred has {len(pred)}")
    if len(y) == 0:
        raise ValueError("y and pred are empty")
    return float((y == pred).mean())


def auroc(y: Shaped[np.ndarray, " n"], score: Float[np.ndarray, " n"]) -> float:
    """Area under the ROC curve, by the Mann-Whitney rank statistic (ties count one half)."""
    y, score = _check(y, score)
    return float(_auroc_rows(y[None, :], score[None, :])[0])


def _auroc_rows(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """AUROC of each row of ``[b, n]`` label/score matrices (every row holds both classes)."""
    ranks = rankdata(score, axis=1)
    n1 = y.sum(1)
    n0 = y.shape[1] - n1
    if (n1 == 0).any() or (n0 == 0).any():
        raise ValueError("AUROC needs both classes in y")
    return ((ranks * y).sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def bootstrap_ci(
    y: Shaped[np.ndarray, " n"],
    score: Float[np.ndarray, " n"],
    *,
    metric: str = "auroc",
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``metric`` ("auroc" or "accuracy" of
    ``score > 0``), resampling within each class (so every resample holds both classes)."""
    y, score = _check(y, score)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    idx = np.concatenate(
        [rng.choice(np.flatnonzero(y == c), size=(n_boot, int((y == c).sum()))) for c in (0, 1) if (y == c).any()],
        axis=1,
    )
    yb, sb = y[idx], score[idx]
    if metric == "auroc":
        values = _auroc_rows(yb, sb)
    elif metric == "accuracy":
        values = ((sb > 0) == yb).mean(1)
    else:
        raise ValueError(f"metric must be 'auroc' or 'accuracy', got {metric!r}")
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def tpr_at_fpr(y: Shaped[np.ndarray, " n"], score: Float[np.ndarray, " n"], fpr: float = 0.01) -> float:
    """The highest true-positive rate of a threshold ``score >= t`` whose false-positive rate is at
    most ``fpr`` (0 if no threshold qualifies; with fewer than 1/fpr negatives that means no false
    positive at all)."""
    y, score = _check(y, score)
    if not 0 <= fpr <= 1:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    n1, n0 = int(y.sum()), int(len(y) - y.sum())
    if n1 == 0 or n0 == 0:
        raise ValueError("tpr_at_fpr needs both classes in y")
    order = np.argsort(-score, kind="stable")
    s, yy = score[order], y[order]
    tp, fp = np.cumsum(yy), np.cumsum(1 - yy)
    last = np.r_[s[1:] != s[:-1], True]  # thresholds only between distinct scores
    ok = fp[last] / n0 <= fpr + 1e-12
    return float((tp[last][ok] / n1).max()) if ok.any() else 0.0


def calibration_error(y: Shaped[np.ndarray, " n"], prob: Float[np.ndarray, " n"], n_bins: int = 10) -> float:
    """Expected calibration error of P(y = 1): ``Σ_b |B_b|/n · |mean(y in b) − mean(p in b)|`` over
    ``n_bins`` equal-width probability bins (Naeini et al. 2015)."""
    y, prob = _check(y, prob)
    if prob.min() < 0 or prob.max() > 1:
        raise ValueError("prob must lie in [0, 1]")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    bins = np.minimum((prob * n_bins).astype(int), n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, y, n_bins) - np.bincount(bins, prob, n_bins))
    return float(gap.sum() / len(y)) if count.sum() else 0.0
