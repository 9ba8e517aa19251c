"""``sweep_layers``: fit every probe method at every layer on a train split, pick the layer and
method on validation only, report the test split once, with label-shuffle and random-direction
controls per layer."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from sklearn.base import clone

from probes import metrics as M
from probes.estimators import LDAProbe, LogisticProbe, MeanDiffProbe, _LinearProbe
from probes.inputs import layer_hooks, row_labels
from probes.splits import grouped_split

Method = Literal["logistic", "mean_diff", "lda"]
Select = Literal["val", "lofo"]
METHODS: dict[str, type[_LinearProbe]] = {"logistic": LogisticProbe, "mean_diff": MeanDiffProbe, "lda": LDAProbe}


def make_probe(method: str, **params: Any) -> _LinearProbe:
    """A fresh probe of ``method`` ("logistic", "mean_diff" or "lda")."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    return METHODS[method](**params)


def method_name(probe: _LinearProbe) -> str:
    for name, cls in METHODS.items():
        if type(probe) is cls:
            return name
    raise TypeError(f"not a steerlens probe: {type(probe).__name__}")


@dataclass(frozen=True)
class LayerSweep:
    """Per-(layer, method) metrics, controls and the validation-chosen best probe.

    ``records``: one dict per (layer, method) with ``val`` and ``test`` metrics (``auroc``,
    ``auroc_ci``, ``accuracy``, ``tpr_at_1pct_fpr``, ``ece``), ``control`` (``shuffle_auroc``: the
    same method with the same hyper-parameters refitted on shuffled training labels, test AUROC
    averaged over ``n_shuffle`` shuffles; ``random_auroc``: mean over ``n_random`` seeded random
    unit directions of max(AUROC, 1 − AUROC) on the test split, since a random direction has no
    sign), ``selectivity`` (test AUROC minus each control) and timings.
    With ``lofo`` (a row field, e.g. ``"family"``) each record also holds ``lofo``: leave-one-
    family-out AUROC (``auroc``: the mean over held-out families, ``min``, ``by_family``).
    ``picks``: the (layer, method) each criterion chooses, ``"val"`` (highest validation AUROC,
    ties: lower validation log-loss) and, with ``lofo``, ``"lofo"`` (highest mean leave-one-
    family-out AUROC, ties: validation AUROC), each with its metrics. ``best``: the pick of
    ``select``, and its test metrics. ``probe``: that probe, fitted on the training split;
    ``probe_at(layer, method)``: any other probe of the sweep.
    """

    hook: str
    layers: tuple[int, ...]
    methods: tuple[str, ...]
    records: tuple[dict, ...]
    best: dict
    probe: _LinearProbe = field(repr=False)
    split: dict[str, np.ndarray] = field(repr=False)
    test_scores: np.ndarray = field(repr=False)
    test_labels: np.ndarray = field(repr=False)
    classes: tuple = ()
    seed: int = 0
    info: dict = field(default_factory=dict)
    fitted: dict = field(default_factory=dict, repr=False)
    select: str = "val"
    picks: dict = field(default_factory=dict)

    def curve(self, metric: str = "auroc", split: str = "test", method: str | None = None) -> np.ndarray:
        """``metric`` by layer (in ``layers`` order) for ``method`` (default: the best one).
        ``metric`` may also be ``"shuffle_auroc"``/``"random_auroc"`` (controls, test split)."""
        method = method or self.best["method"]
        out = []
        for r in self.records:
            if r["method"] == method:
                out.append(r["control"][metric] if metric in r["control"] else r[split][metric])
        if not out:
            raise KeyError(f"method {method!r} was not swept; methods: {self.methods}")
        return np.asarray(out, dtype=float)

    def best_for(self, method: str, select: Select | None = None) -> dict:
        """The record of ``method`` at its own chosen layer, by ``select`` (default: the sweep's):
        ``"val"``, highest validation AUROC (ties: lower validation log-loss), or ``"lofo"``,
        highest mean leave-one-family-out AUROC (ties: validation AUROC)."""
        recs = [r for r in self.records if r["method"] == method]
        if not recs:
            raise KeyError(f"method {method!r} was not swept; methods: {self.methods}")
        return max(recs, key=_select_key(select or self.select, bool(self.picks.get("lofo"))))

    def probe_at(self, layer: int | None = None, method: str | None = None) -> _LinearProbe:
        """The fitted probe (training split) of ``method`` (default: the best) at ``layer``
        (default: that method's validation-chosen layer); its ``meta_`` names hook, pooling
        (``"pool"``, as the activations were captured) and metrics."""
        method = method or self.best["method"]
        layer = self.best_for(method)["layer"] if layer is None else layer
        if (layer, method) not in self.fitted:
            raise KeyError(f"no probe for layer {layer}, method {method!r}; layers {self.layers}, methods {self.methods}")
        return self.fitted[(layer, method)]

    def to_dict(self) -> dict:
        """Everything but the fitted probe and arrays, JSON-ready."""
        return {
            "hook": self.hook, "layers": list(self.layers), "methods": list(self.methods),
            "best": self.best, "records": list(self.records), "classes": [_py(c) for c in self.classes],
            "seed": self.seed, "info": self.info, "select": self.select, "picks": self.picks,
            "split_sizes": {k: int(len(v)) for k, v in self.split.items()},
        }


def sweep_layers(
    acts: Any,
    labels: Sequence | np.ndarray | None = None,
    groups: Sequence | np.ndarray | None = None,
    *,
    methods: Sequence[Method] = ("logistic", "mean_diff", "lda"),
    hook: str = "resid_post",
    layers: Sequence[int] | None = None,
    seed: int = 0,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    n_boot: int = 1000,
    n_shuffle: int = 5,
    n_random: int = 10,
    controls: bool = True,
    dataset: str | None = None,
    dataset_hash: str | None = None,
    lofo: str | None = None,
    select: Select = "val",
    threads: int | None = 1,
    progress: bool = False,
) -> LayerSweep:
    """Sweep ``methods`` over every captured layer of ``hook``.

    ``acts``: a ``steerlens.Activations`` (pooled, one row per example) or a mapping
    ``{hook_name: tensor[n, d]}``. ``labels`` default to ``acts.labels``; ``groups`` default to
    the rows' ``"group"`` field when every row has one, else one group per row. Rows sharing a
    group never straddle train/val/test (``fractions``). Standardisation and hyper-parameters
    are fitted on the training split (``LogisticProbe`` cross-validates ``C`` within it, grouped);
    the best layer and method are chosen on validation only; test metrics are reported per layer
    for the plots and, for the chosen probe, once as ``best["test"]``. Every fitted probe's
    ``meta_`` records its hook, layer, method, metrics and the pooling of ``acts`` (``"pool"``;
    ``None`` for a mapping), so it is later read with the pooling it was fitted on.

    ``lofo``: a row field (``"family"``, or ``"dataset"`` for combined datasets) for leave-one-
    family-out validation: for each value ``f`` of it, the same method with the task probe's
    hyper-parameters is refitted on the training rows of the other families and scored (AUROC)
    on family ``f``'s training and validation rows (never the test split); a family whose rows
    there hold one class only is skipped. ``select``: the criterion that chooses ``best`` and
    ``probe``, ``"val"`` (validation AUROC) or ``"lofo"`` (mean leave-one-family-out AUROC,
    which rewards a probe that transfers to a family it was not trained on; needs ``lofo``).
    ``picks`` holds both choices.

    ``threads``: BLAS threads while fitting (these small problems run fastest single-threaded,
    and many times faster on a busy machine; ``None`` keeps the library default).
    """
    tensors, rows, info = _unpack(acts)
    y_raw = _labels(labels, rows, len(next(iter(tensors.values()))) if tensors else 0)
    by_layer = layer_hooks(tensors, hook, layers)
    n = len(y_raw)
    classes, y = np.unique(y_raw, return_inverse=True)
    if len(classes) != 2:
        raise ValueError(
            f"labels must hold exactly two classes, got {len(classes)}: {[_py(c) for c in classes[:5]]}"
        )
    g = _groups(groups, rows, n)
    if select not in ("val", "lofo"):
        raise ValueError(f"select must be 'val' or 'lofo', got {select!r}")
    if select == "lofo" and lofo is None:
        raise ValueError("select='lofo' needs lofo=... (the row field whose values are held out, e.g. 'family')")
    fam = _families(lofo, rows, n) if lofo is not None else None
    for m in methods:
        make_probe(m)  # validates names early
    if not methods:
        raise ValueError("methods is empty")
    mats = {layer: _matrix(tensors[name], name, n) for layer, name in by_layer.items()}  # validates all first
    tr, va, te = grouped_split(y, g, fractions=fractions, seed=seed)

    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        records, fitted = _sweep(mats, by_layer, y, g, (tr, va, te), methods, seed, n_boot, n_shuffle, n_random, controls, progress)
        if fam is not None:
            for rec in records:
                rec["lofo"] = _lofo(fitted[(rec["layer"], rec["method"])], mats[rec["layer"]], y, g, fam, tr, va)
    picks = {"val": _pick(max(records, key=_val_key))}
    if fam is not None:
        picks["lofo"] = _pick(max(records, key=_lofo_key))
    best_rec = max(records, key=_select_key(select, fam is not None))
    data_hash = dataset_hash or _rows_digest(rows, y_raw)
    for rec in records:  # every fitted probe knows where it reads and how it scored
        fitted[(rec["layer"], rec["method"])].meta_ = {
            "hook": rec["hook"], "layer": rec["layer"], "method": rec["method"],
            "model": info.get("model"), "fingerprint": info.get("fingerprint"),
            "pool": info.get("pool"), "dataset": dataset, "dataset_hash": data_hash, "classes": [_py(c) for c in classes],
            "metrics": {"val": rec["val"], "test": rec["test"], "control": rec["control"]}, "seed": seed,
        }
    probe = fitted[(best_rec["layer"], best_rec["method"])]
    best = {
        "layer": best_rec["layer"], "method": best_rec["method"], "hook": best_rec["hook"],
        "val": best_rec["val"], "test": best_rec["test"], "control": best_rec["control"],
    }
    if fam is not None:
        best["lofo"] = best_rec["lofo"]
    info = {**info, "n": n, "dataset": dataset, "dataset_hash": data_hash, "n_boot": n_boot,
            "n_shuffle": n_shuffle, "n_random": n_random, "fractions": list(fractions), "lofo": lofo}
    return LayerSweep(
        hook=hook, layers=tuple(by_layer), methods=tuple(methods), records=tuple(records), best=best,
        probe=probe, split={"train": tr, "val": va, "test": te},
        test_scores=probe.decision_function(mats[best_rec["layer"]][te]), test_labels=y[te], classes=tuple(classes),
        seed=seed, info=info, fitted=fitted, select=select, picks=picks,
    )


def _sweep(mats, by_layer, y, g, split, methods, seed, n_boot, n_shuffle, n_random, controls, progress):
    from tqdm.auto import tqdm

    tr, va, te = split
    records, fitted = [], {}
    for layer, name in tqdm(by_layer.items(), desc="sweep", unit="layer", disable=not progress):
        X = mats[layer]
        rng_dirs = np.random.default_rng([seed, layer]).standard_normal((n_random, X.shape[1])).astype(np.float32)
        random_auc = _random_control(X[te], y[te], rng_dirs) if controls and n_random else None
        for method in methods:
            t0 = time.perf_counter()
            probe = make_probe(method).fit(X[tr], y[tr], groups=g[tr])
            fit_s = time.perf_counter() - t0
            rec = {
                "layer": layer, "method": method, "hook": name,
                "val": _evaluate(probe, X[va], y[va], n_boot=0, seed=seed),
                "test": _evaluate(probe, X[te], y[te], n_boot=n_boot, seed=seed),
                "fit_s": fit_s, "control": {}, "selectivity": {},
            }
            if controls:
                t1 = time.perf_counter()
                if n_shuffle:
                    rec["control"]["shuffle_auroc"] = _shuffle_control(probe, X[tr], y[tr], g[tr], X[te], y[te], n_shuffle, seed, layer)
                if random_auc is not None:
                    rec["control"]["random_auroc"] = random_auc
                rec["control_s"] = time.perf_counter() - t1
                for k, v in rec["control"].items():
                    rec["selectivity"][k.replace("_auroc", "")] = rec["test"]["auroc"] - v
            records.append(rec)
            fitted[(layer, method)] = probe
    return records, fitted


def _val_key(r: dict) -> tuple[float, float]:
    return r["val"]["auroc"], -r["val"]["log_loss"]


def _lofo_key(r: dict) -> tuple[float, float, float]:
    return r["lofo"]["auroc"], r["val"]["auroc"], -r["val"]["log_loss"]


def _select_key(select: str, have_lofo: bool):
    if select == "lofo":
        if not have_lofo:
            raise ValueError("this sweep has no leave-one-family-out scores: sweep with lofo=... to select by 'lofo'")
        return _lofo_key
    if select != "val":
        raise ValueError(f"select must be 'val' or 'lofo', got {select!r}")
    return _val_key


def _pick(r: dict) -> dict:
    out = {"layer": r["layer"], "method": r["method"], "hook": r["hook"], "val_auroc": r["val"]["auroc"],
           "test_auroc": r["test"]["auroc"]}
    if "lofo" in r:
        out["lofo_auroc"], out["lofo_min"] = r["lofo"]["auroc"], r["lofo"]["min"]
    return out


def _lofo(probe, X: np.ndarray, y: np.ndarray, g: np.ndarray, fam: np.ndarray, tr: np.ndarray, va: np.ndarray) -> dict:
    """Leave-one-family-out AUROC: per family, refit (the probe's hyper-parameters fixed) on the
    other families' training rows, score that family's training + validation rows."""
    fixed = {"C": probe.C_} if isinstance(probe, LogisticProbe) else {}
    seen = np.union1d(tr, va)
    by_family = {}
    for f in dict.fromkeys(fam[seen].tolist()):
        fit_idx, eval_idx = tr[fam[tr] != f], seen[fam[seen] == f]
        if len(np.unique(y[eval_idx])) < 2 or len(np.unique(y[fit_idx])) < 2:
            continue
        held_out = clone(probe).set_params(**fixed).fit(X[fit_idx], y[fit_idx], groups=g[fit_idx])
        by_family[str(f)] = M.auroc(y[eval_idx], held_out.decision_function(X[eval_idx]))
    if not by_family:
        raise ValueError("leave-one-family-out needs at least two families, each holding both classes")
    aucs = list(by_family.values())
    return {"auroc": float(np.mean(aucs)), "min": float(np.min(aucs)), "by_family": by_family}


# -- evaluation ----------------------------------------------------------------------------------
def evaluate(probe: _LinearProbe, X, y01: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Metrics of a fitted probe on ``(X, y01)`` (``y01`` = 1 for ``classes_[1]``)."""
    return _evaluate(probe, _matrix(X, "X", len(y01)), np.asarray(y01), n_boot=n_boot, seed=seed)


def _evaluate(probe: _LinearProbe, X: np.ndarray, y: np.ndarray, *, n_boot: int, seed: int) -> dict:
    z = probe.decision_function(X)
    p = 1.0 / (1.0 + np.exp(-np.clip(z.astype(np.float64), -80, 80)))
    out = {
        "n": int(len(y)),
        "accuracy": M.accuracy(y, (z > 0).astype(int)),
        "auroc": M.auroc(y, z),
        "tpr_at_1pct_fpr": M.tpr_at_fpr(y, z, 0.01),
        "ece": M.calibration_error(y, p),
        "log_loss": float(np.mean(np.logaddexp(0, np.where(y > 0, -z, z)))),
    }
    if n_boot:
        out["auroc_ci"] = list(M.bootstrap_ci(y, z, n_boot=n_boot, seed=seed))
    return out


def _shuffle_control(probe, Xtr, ytr, gtr, Xte, yte, n_shuffle: int, seed: int, layer: int) -> float:
    """Test AUROC of the same method, hyper-parameters fixed to the task probe's, refitted on
    shuffled training labels; mean over ``n_shuffle`` shuffles."""
    fixed = {"C": probe.C_} if isinstance(probe, LogisticProbe) else {}
    rng = np.random.default_rng([seed, layer, 1])
    aucs = []
    for _ in range(n_shuffle):
        control = clone(probe).set_params(**fixed).fit(Xtr, rng.permutation(ytr), groups=gtr)
        aucs.append(M.auroc(yte, control.decision_function(Xte)))
    return float(np.mean(aucs))


def _random_control(X: np.ndarray, y: np.ndarray, dirs: np.ndarray) -> float:
    """Mean over random directions of max(AUROC, 1 − AUROC) of the projection."""
    proj = X.astype(np.float64) @ dirs.T.astype(np.float64)  # [n, k]
    aucs = [M.auroc(y, proj[:, k]) for k in range(proj.shape[1])]
    return float(np.mean([max(a, 1 - a) for a in aucs]))


# -- input handling --------------------------------------------------------------------------------
def _unpack(acts) -> tuple[dict, list[dict], dict]:
    if hasattr(acts, "hooks") and hasattr(acts, "rows"):
        if getattr(acts, "pool", None) == "all":
            raise ValueError("sweep_layers needs one row per example: capture with pool='last', 'mean' or positions, not 'all'")
        # the pooling the probes are fitted on, recorded in each probe's meta_
        return {h: acts[h] for h in acts.hooks}, list(acts.rows), {**acts.info, "pool": getattr(acts, "pool", None)}
    if isinstance(acts, Mapping):
        return dict(acts), [], {}
    raise TypeError(f"acts must be a steerlens Activations or a mapping {{hook: tensor[n, d]}}, got {type(acts).__name__}")


def _labels(labels, rows: list[dict], n: int) -> np.ndarray:
    if n == 0:
        raise ValueError("the dataset is empty: no activations to probe")
    y = row_labels(labels, rows)
    if len(y) != n:
        raise ValueError(f"labels has {len(y)} entries but the activations have {n} rows")
    return y


def _groups(groups, rows: list[dict], n: int) -> np.ndarray:
    if groups is None:
        if rows and all("group" in r for r in rows):
            return np.asarray([str(r["group"]) for r in rows])
        return np.arange(n)
    g = np.asarray(groups)
    if len(g) != n:
        raise ValueError(f"groups has {len(g)} entries but the activations have {n} rows")
    return g


def _families(field_name: str, rows: list[dict], n: int) -> np.ndarray:
    if not isinstance(field_name, str):
        raise TypeError(f"lofo must be a row field name (e.g. 'family'), got {field_name!r}")
    if not rows or any(field_name not in r for r in rows):
        raise ValueError(f"lofo={field_name!r}: every row needs a {field_name!r} field (pass Activations captured with rows=)")
    fam = np.asarray([str(r[field_name]) for r in rows])
    if len(set(fam.tolist())) < 2:
        raise ValueError(f"lofo={field_name!r}: the rows hold one family only ({fam[0]!r}); nothing to hold out")
    return fam


def _matrix(x, name: str, n: int) -> np.ndarray:
    X = x.detach().to("cpu", torch.float32).numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"activations at {name!r} must be [n, d], got shape {X.shape}")
    if len(X) != n:
        raise ValueError(f"activations at {name!r} have {len(X)} rows but there are {n} labels")
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X)).any(1).sum())
        raise ValueError(f"activations at {name!r} contain NaN or inf in {bad} of {len(X)} rows")
    return X


def _rows_digest(rows: list[dict], y: np.ndarray) -> str:
    texts = [r.get("prompt", r.get("text", "")) for r in rows] if rows else []
    blob = json.dumps({"prompts": texts, "labels": [_py(v) for v in y]}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _py(x):
    return x.item() if hasattr(x, "item") else x
