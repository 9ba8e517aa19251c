"""Linear concept probes as scikit-learn classifiers: logistic regression, mass-mean, shrunk LDA.

All three are binary and linear in the raw activations: after ``fit``,
``decision_function(X) = X @ coef_[0] + intercept_[0]`` (any standardisation, fitted on the
training data only, is folded into ``coef_``/``intercept_``) and ``predict_proba`` is its
sigmoid. ``direction`` is a unit d-vector in activation space, usable as a steering vector.
Math is float32 throughout.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float, Shaped
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

#: activations as numpy or torch, ``[n, d]``
ArrayLike = np.ndarray | torch.Tensor
_EPS = 1e-6  # a feature whose train std is below this is left unscaled (constant feature)


def _numpy(x):
    """torch tensors (any device/dtype) -> numpy; anything else untouched for ``validate_data``."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32).numpy()
    return x


class _LinearProbe(ClassifierMixin, BaseEstimator):
    """Shared validation, prediction and the ``direction`` property of the three probes."""

    def _validate_fit(self, X, y) -> tuple[np.ndarray, np.ndarray]:
        X, y = validate_data(self, _numpy(X), _numpy(y), dtype=np.float32)
        check_classification_targets(y)
        if len(np.unique(y)) > 2:
            raise ValueError(
                f"Only binary classification is supported. {type(self).__name__} is a binary probe; y holds {len(np.unique(y))} classes "
                f"({np.unique(y)[:5].tolist()}...). Pass labels with exactly two values."
            )
        self.classes_, y01 = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                "Classifier can't train when only one class is present: y holds only "
                f"{self.classes_.tolist()!r}. A probe needs examples of both labels."
            )
        return X, y01.astype(np.float32)

    def _standardize_stats(self, X: np.ndarray, standardize: bool) -> tuple[np.ndarray, np.ndarray]:
        mean = X.mean(0, dtype=np.float32)
        if not standardize:
            return mean, np.ones_like(mean)
        scale = X.std(0, dtype=np.float32)
        return mean, np.where(scale < _EPS, 1.0, scale).astype(np.float32)

    def _set_linear(self, w_std: np.ndarray, b_std: float, mean: np.ndarray, scale: np.ndarray, direction: np.ndarray) -> None:
        """Fold ``((x - mean) / scale) @ w_std + b_std`` into raw-space ``coef_``, ``intercept_``."""
        w = (w_std / scale).astype(np.float32)
        self.coef_ = w[None, :]
        self.intercept_ = np.asarray([b_std - float(mean @ w)], dtype=np.float32)
        self.mean_, self.scale_ = mean.astype(np.float32), scale.astype(np.float32)
        norm = float(np.linalg.norm(direction))
        self.direction_ = (direction / norm if norm > 0 else direction).astype(np.float32)

    def decision_function(self, X: Float[ArrayLike, "n d"]) -> Float[np.ndarray, " n"]:
        """Log-odds of ``classes_[1]``: ``X @ coef_[0] + intercept_[0]``."""
        check_is_fitted(self)
        X = validate_data(self, _numpy(X), dtype=np.float32, reset=False)
        # float64 accumulation: each row's score is then independent of the batch it came in
        z = X.astype(np.float64) @ self.coef_[0].astype(np.float64) + float(self.intercept_[0])
        return z.astype(np.float32)

    def predict_proba(self, X: Float[ArrayLike, "n d"]) -> Float[np.ndarray, "n 2"]:
        z = self.decision_function(X)
        p1 = 1.0 / (1.0 + np.exp(-np.clip(z, -80, 80)))
        return np.stack([1.0 - p1, p1], axis=1).astype(np.float32)

    def predict(self, X: Float[ArrayLike, "n d"]) -> Shaped[np.ndarray, " n"]:
        z = self.decision_function(X)
        return self.classes_[(z > 0).astype(int)]

    @property
    def direction(self) -> Float[torch.Tensor, " d"]:
        """The probe's unit direction in activation space (float32 torch tensor)."""
        check_is_fitted(self)
        return torch.from_numpy(self.direction_.copy())

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags


class LogisticProbe(_LinearProbe):
    """L2 logistic regression on standardised activations; ``C`` chosen by (grouped) stratified
    k-fold cross-validation on the training data (log-loss) unless given.

    Parameters: ``C`` fixes the inverse regularisation (``None``: choose from ``Cs``), ``cv`` folds,
    ``standardize`` (z-score with training statistics), ``max_iter``/``tol`` for L-BFGS,
    ``random_state`` for the fold shuffle.
    """

    def __init__(
        self,
        *,
        C: float | None = None,
        Cs: Sequence[float] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
        cv: int = 3,
        standardize: bool = True,
        max_iter: int = 500,
        tol: float = 1e-4,
        random_state: int = 0,
    ):
        self.C = C
        self.Cs = Cs
        self.cv = cv
        self.standardize = standardize
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def fit(self, X: Float[ArrayLike, "n d"], y: Shaped[ArrayLike, " n"], groups: Shaped[ArrayLike, " n"] | None = None) -> "LogisticProbe":
        """Fit; ``groups`` (optional) keeps grouped rows in one CV fold while choosing ``C``."""
        X, y = self._validate_fit(X, y)
        mean, scale = self._standardize_stats(X, self.standardize)
        Z = (X - mean) / scale
        if self.C is not None:
            if not self.C > 0:
                raise ValueError(f"C must be > 0, got {self.C!r}")
            self.C_ = float(self.C)
        else:
            self.C_, self.cv_scores_ = self._choose_C(Z, y, groups)
        lr = self._lr(self.C_).fit(Z, y)
        w, b = lr.coef_[0].astype(np.float32), float(lr.intercept_[0])
        self.n_iter_ = int(lr.n_iter_[0])
        self._set_linear(w, b, mean, scale, w / scale)
        return self

    def _lr(self, C: float, warm: bool = False) -> LogisticRegression:
        return LogisticRegression(C=C, solver="lbfgs", max_iter=self.max_iter, tol=self.tol, warm_start=warm)

    def _choose_C(self, Z: np.ndarray, y: np.ndarray, groups) -> tuple[float, dict[float, float]]:
        from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

        Cs = sorted(float(c) for c in self.Cs)
        if not Cs or any(not c > 0 for c in Cs):
            raise ValueError(f"Cs must be a non-empty sequence of positive floats, got {self.Cs!r}")
        if len(Cs) == 1:
            return Cs[0], {}
        n_min = int(min(np.bincount(y.astype(int))))
        folds = min(int(self.cv), n_min)
        if folds < 2:
            warnings.warn(f"LogisticProbe: too few examples per class ({n_min}) to cross-validate C; using C={Cs[len(Cs) // 2]}")
            return Cs[len(Cs) // 2], {}
        if groups is not None:
            groups = np.asarray(_numpy(groups))
            if len(groups) != len(y):
                raise ValueError(f"groups has {len(groups)} entries for {len(y)} samples")
            folds = min(folds, len(np.unique(groups)))
            if folds < 2:
                warnings.warn(f"LogisticProbe: one group only; using C={Cs[len(Cs) // 2]}")
                return Cs[len(Cs) // 2], {}
            splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=self.random_state)
        else:
            splitter = StratifiedKFold(folds, shuffle=True, random_state=self.random_state)
        loss = np.zeros(len(Cs))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for tr, va in splitter.split(Z, y, groups):
                if len(np.unique(y[tr])) < 2:
                    continue
                lr = self._lr(Cs[0], warm=True)
                for i, C in enumerate(Cs):  # warm-started along increasing C
                    lr.set_params(C=C).fit(Z[tr], y[tr])
                    z = Z[va] @ lr.coef_[0] + lr.intercept_[0]
                    # log-loss of sigmoid(z): log(1 + exp(-z)) for y=1, log(1 + exp(z)) for y=0
                    loss[i] += float(np.logaddexp(0, np.where(y[va] > 0, -z, z)).sum())
        best = int(np.argmin(loss))
        return Cs[best], dict(zip(Cs, (loss / len(y)).tolist()))


class MeanDiffProbe(_LinearProbe):
    """Mass-mean probe: direction ``θ = μ₁ − μ₀`` (Marks & Tegmark 2023, "The Geometry of Truth",
    arXiv:2310.06824, §5); probabilities from a 1-D logistic fit on the projection ``θ̂ᵀx``."""

    def __init__(self, *, calibration_C: float = 1.0):
        self.calibration_C = calibration_C

    def fit(self, X: Float[ArrayLike, "n d"], y: Shaped[ArrayLike, " n"], groups=None) -> "MeanDiffProbe":
        """Fit on ``X``, ``y``; ``groups`` is accepted for a common signature and not used."""
        X, y = self._validate_fit(X, y)
        theta = X[y > 0].mean(0, dtype=np.float32) - X[y == 0].mean(0, dtype=np.float32)
        mean = X.mean(0, dtype=np.float32)
        _fit_on_projection(self, X, y, theta, mean, np.ones_like(mean), theta)
        return self


class LDAProbe(_LinearProbe):
    """Shrunk LDA: ``w = Σ_shrunk⁻¹ (μ₁ − μ₀)`` with ``Σ`` the pooled within-class covariance of the
    standardised activations, shrunk towards ``tr(Σ)/d · I`` by Ledoit & Wolf (2004, "A well-conditioned
    estimator for large-dimensional covariance matrices", J. Multivariate Anal. 88) or a fixed ``shrinkage``
    in [0, 1]; the "mass-mean probe with IID correction" of Marks & Tegmark (2023)."""

    def __init__(self, *, shrinkage: float | Literal["auto"] = "auto", standardize: bool = True, calibration_C: float = 1.0):
        self.shrinkage = shrinkage
        self.standardize = standardize
        self.calibration_C = calibration_C

    def fit(self, X: Float[ArrayLike, "n d"], y: Shaped[ArrayLike, " n"], groups=None) -> "LDAProbe":
        """Fit on ``X``, ``y``; ``groups`` is accepted for a common signature and not used."""
        from scipy.linalg import cho_factor, cho_solve
        from sklearn.covariance import ledoit_wolf_shrinkage

        if not (self.shrinkage == "auto" or (isinstance(self.shrinkage, (int, float)) and 0 <= self.shrinkage <= 1)):
            raise ValueError(f"shrinkage must be 'auto' (Ledoit-Wolf) or a float in [0, 1], got {self.shrinkage!r}")
        X, y = self._validate_fit(X, y)
        mean, scale = self._standardize_stats(X, self.standardize)
        Z = (X - mean) / scale
        mu1, mu0 = Z[y > 0].mean(0, dtype=np.float32), Z[y == 0].mean(0, dtype=np.float32)
        W = np.where((y > 0)[:, None], Z - mu1, Z - mu0)  # within-class residuals
        n, d = W.shape
        sigma = (W.T @ W) / np.float32(max(n - 2, 1))
        alpha = float(ledoit_wolf_shrinkage(W, assume_centered=True)) if self.shrinkage == "auto" else float(self.shrinkage)
        self.shrinkage_ = alpha
        target = np.float32(np.trace(sigma) / d)
        sigma_shrunk = (1 - alpha) * sigma + alpha * target * np.eye(d, dtype=np.float32)
        # Cholesky solve: the shrunk covariance is symmetric positive definite once alpha > 0
        try:
            w_std = cho_solve(cho_factor(sigma_shrunk, lower=True), mu1 - mu0)
        except np.linalg.LinAlgError:  # alpha = 0 with a singular covariance
            w_std = np.linalg.lstsq(sigma_shrunk, mu1 - mu0, rcond=None)[0]
        w_std = w_std.astype(np.float32)
        _fit_on_projection(self, X, y, w_std / scale, mean, np.ones_like(mean), w_std / scale)
        return self


def _fit_on_projection(probe: _LinearProbe, X, y, w_raw, mean, scale, direction) -> None:
    """Platt-style 1-D logistic on ``s = (x − mean) · ŵ`` (standardised), folded back to raw space."""
    norm = float(np.linalg.norm(w_raw)) or 1.0
    u = (w_raw / norm).astype(np.float32)
    s = (X - mean) @ u
    sd = float(s.std()) or 1.0
    lr = LogisticRegression(C=probe.calibration_C, solver="lbfgs").fit((s / sd)[:, None], y)
    a, b = float(lr.coef_[0, 0]) / sd, float(lr.intercept_[0])
    probe._set_linear(a * u, b, mean, scale, direction)
