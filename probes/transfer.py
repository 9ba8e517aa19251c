"""The generalisation report of a chosen probe: AUROC per dataset and family (flagged when below
0.5, "reads this family backwards"), next to an operating point set on a control set of neutral
sentences (Apollo Research, Goldowsky-Dill et al. 2025, "Detecting Strategic Deception Using
Linear Probes", arXiv:2502.03407: the threshold is the probe score that flags 1% of ordinary
control text).

The probe scores ``z`` (its ``decision_function``, log-odds of ``classes_[1]``, "true" for the
truth datasets). On the control scores ``c_1 ≥ c_2 ≥ … ≥ c_m``, with ``k = ⌊fpr · m⌋`` control
rows allowed to be flagged:

```
t_pos = c_{k+1}   (the (k+1)-th highest)   pos_at_fpr = mean(z_i > t_pos  over rows of classes_[1])
t_neg = c_{m−k}   (the (k+1)-th lowest)    neg_at_fpr = mean(z_i < t_neg  over rows of classes_[0])
```

so at most ``k`` control sentences score beyond either threshold (with fewer than ``1/fpr``
control sentences, ``k = 0``: beyond every control sentence). For a truth probe ``neg_at_fpr`` is
the deception-monitor figure: the share of false statements flagged while flagging at most 1% of
neutral text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from probes import metrics as M
from probes.sweep import _matrix, _unpack

if TYPE_CHECKING:
    from probes.sweep import LayerSweep


@dataclass(frozen=True)
class TransferReport:
    """``rows``: one dict per (dataset, family) and per dataset (``family`` ``"all"``) with
    ``n``, ``auroc``, ``backwards`` (AUROC < 0.5: the probe reads it backwards), ``held_out``
    (``"test split"`` for datasets the probe was swept on, ``"all rows"`` for the others) and,
    with a control set, ``pos_at_fpr`` / ``neg_at_fpr`` (see the module docstring).
    ``thresholds``: ``{"pos": t_pos, "neg": t_neg}`` on the probe's logit scale."""

    layer: int | None
    method: str | None
    hook: str | None
    rows: tuple[dict, ...]
    fpr: float = 0.01
    n_control: int = 0
    thresholds: dict = field(default_factory=dict)
    picks: dict = field(default_factory=dict)

    @property
    def backwards(self) -> list[tuple[str, str]]:
        """(dataset, family) pairs the probe reads backwards (AUROC < 0.5)."""
        return [(r["dataset"], r["family"]) for r in self.rows if r["backwards"]]

    def auroc(self, dataset: str, family: str = "all") -> float:
        """The AUROC of ``dataset`` (one ``family`` of it, default: all its rows)."""
        for r in self.rows:
            if r["dataset"] == dataset and r["family"] == family:
                return r["auroc"]
        raise KeyError(f"no row for dataset {dataset!r}, family {family!r}")

    def table(self) -> str:
        """The report as a Markdown table."""
        pct = f"{100 * self.fpr:g}%"
        head = ["dataset", "family", "n", "held out", "AUROC"]
        if self.n_control:
            head += [f"true flagged at {pct} neutral FPR", f"false flagged at {pct} neutral FPR"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [r["dataset"], r["family"], str(r["n"]), r["held_out"],
                     f"{r['auroc']:.3f}" + (" **backwards**" if r["backwards"] else "")]
            if self.n_control:
                cells += [f"{r['pos_at_fpr']:.2f}", f"{r['neg_at_fpr']:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"layer": self.layer, "method": self.method, "hook": self.hook, "rows": list(self.rows),
                "fpr": self.fpr, "n_control": self.n_control, "thresholds": self.thresholds, "picks": self.picks,
                "backwards": [list(b) for b in self.backwards]}


def transfer_report(
    result: "LayerSweep",
    acts: Any,
    *,
    others: Mapping[str, Any] | None = None,
    control: Any = None,
    by: str = "family",
    fpr: float = 0.01,
    layer: int | None = None,
    method: str | None = None,
) -> TransferReport:
    """Score the sweep's chosen probe (or ``result.probe_at(layer, method)``) per dataset and
    family: on the test split of ``acts`` (the activations ``result`` was swept on, split by
    their rows' ``"dataset"`` field, else the sweep's dataset name) and on every row of each of
    ``others`` (``{name: Activations}`` captured at the same hook and pooling, e.g. datasets the
    probe never saw). ``control``: activations of neutral sentences (``Activations`` or a tensor
    ``[m, d]`` at the probe's hook), scored by the same probe to set the operating point at
    ``fpr``. Rows whose family holds one class only get no per-family row."""
    if not 0 <= fpr < 1:
        raise ValueError(f"fpr must be in [0, 1), got {fpr}")
    probe = result.probe if layer is None and method is None else result.probe_at(layer, method)
    hook = probe.meta_["hook"]
    classes = list(result.classes)
    sets = []  # (dataset name, z, y01, families, held_out)
    tensors, rows, _ = _unpack(acts)
    n = len(rows) if rows else len(next(iter(tensors.values())))
    if n != int(sum(len(v) for v in result.split.values())):
        raise ValueError(f"acts has {n} rows but the sweep was fitted on {sum(len(v) for v in result.split.values())}: "
                         "pass the activations the sweep was run on")
    te = result.split["test"]
    X = _matrix(tensors[hook], hook, n)[te]
    y = np.asarray([classes.index(r["label"]) for r in rows])[te] if rows else result.test_labels
    default = str(result.info.get("dataset") or "dataset")
    names = np.asarray([str(r.get("dataset", default)) for r in rows])[te] if rows else np.full(len(te), default)
    fam = np.asarray([str(r.get(by, "")) for r in rows])[te] if rows else np.full(len(te), "")
    z = probe.decision_function(X)
    for d in dict.fromkeys(names.tolist()):
        sets.append((d, z[names == d], y[names == d], fam[names == d], "test split"))
    for d, other in (others or {}).items():
        t, r_other, _ = _unpack(other)
        if not r_other or any("label" not in r for r in r_other):
            raise ValueError(f"others[{d!r}] needs rows with labels (capture with rows=)")
        missing = [r["label"] for r in r_other if r["label"] not in classes]
        if missing:
            raise ValueError(f"others[{d!r}] has labels {sorted(set(missing))} outside the probe's classes {classes}")
        if hook not in t:
            raise ValueError(f"others[{d!r}] was not captured at the probe's hook {hook!r}")
        Xo = _matrix(t[hook], hook, len(r_other))
        sets.append((str(d), probe.decision_function(Xo), np.asarray([classes.index(r["label"]) for r in r_other]),
                     np.asarray([str(r.get(by, "")) for r in r_other]), "all rows"))
    thresholds, n_control = {}, 0
    if control is not None:
        c = np.sort(probe.decision_function(_control_matrix(control, hook)))
        n_control = len(c)
        k = int(np.floor(fpr * n_control + 1e-9))
        thresholds = {"pos": float(c[n_control - 1 - k]), "neg": float(c[k])}
    out = []
    for d, zs, ys, fs, held in sets:
        parts = [("all", np.ones(len(ys), bool))] + [(f, fs == f) for f in sorted(set(fs.tolist())) if f]
        for f, mask in parts:
            if len(np.unique(ys[mask])) < 2:
                continue
            rec = {"dataset": d, "family": f, "n": int(mask.sum()), "held_out": held,
                   "auroc": M.auroc(ys[mask], zs[mask])}
            rec["backwards"] = rec["auroc"] < 0.5
            if thresholds:
                rec["pos_at_fpr"] = float(np.mean(zs[mask][ys[mask] == 1] > thresholds["pos"]))
                rec["neg_at_fpr"] = float(np.mean(zs[mask][ys[mask] == 0] < thresholds["neg"]))
            out.append(rec)
    return TransferReport(layer=probe.meta_.get("layer"), method=probe.meta_.get("method"), hook=hook,
                          rows=tuple(out), fpr=fpr, n_control=n_control, thresholds=thresholds,
                          picks=dict(result.picks))


def _control_matrix(control: Any, hook: str) -> np.ndarray:
    if hasattr(control, "hooks") and hasattr(control, "rows"):
        if hook not in control.hooks:
            raise ValueError(f"control was not captured at the probe's hook {hook!r}; captured: {control.hooks}")
        x = control[hook]
    elif isinstance(control, Mapping):
        if hook not in control:
            raise ValueError(f"control has no tensor at the probe's hook {hook!r}")
        x = control[hook]
    else:
        x = control
    X = _matrix(x, "control", len(x))
    if len(X) == 0:
        raise ValueError("control is empty: pass activations of at least one neutral sentence")
    return X


def truth_recipe(
    model: Any,
    *,
    hook: str = "resid_post",
    layers: Any = None,
    pool: str = "last",
    methods: Any = ("logistic", "mean_diff", "lda"),
    select: str = "lofo",
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = False,
    **sweep_kw: Any,
) -> tuple["LayerSweep", TransferReport]:
    """The truth-probe recipe in one call: capture ``labelled_rows("truth")`` (``truthfulness``
    and its ``negations``, groups kept so a statement and its negation share a split), sweep
    with leave-one-family-out validation by topic family (``lofo="family"``; the layer and method
    chosen by ``select``, default ``"lofo"``), and report the chosen probe's transfer: per
    dataset and family on the test split, on the never-seen ``arithmetic`` dataset, and at the
    operating point set on ``steerlens.neutral.NEUTRAL_TEXTS``. ``sweep_kw`` go to
    ``sweep_layers`` (``n_boot``, ``controls``, ``threads``, ...). Returns ``(sweep, report)``."""
    from steerlens.capturing import capture
    from steerlens.neutral import NEUTRAL_TEXTS

    from probes.datasets import TRUTH, TRUTH_FAMILIES, labelled_rows
    from probes.sweep import sweep_layers

    def grab(rows):
        return capture(model, [r["prompt"] for r in rows], hook, layers=layers, pool=pool, rows=rows,
                       batch_size=batch_size, progress=progress)

    acts = grab(labelled_rows("truth"))
    result = sweep_layers(acts, methods=methods, hook=hook, seed=seed, dataset="truth", lofo="family", select=select,
                          progress=progress, **sweep_kw)
    hook_name = result.best["hook"]
    others = {}
    for name in TRUTH_FAMILIES:
        if name not in TRUTH:
            rows = labelled_rows(name)
            others[name] = capture(model, [r["prompt"] for r in rows], hook_name, pool=pool, rows=rows,
                                   batch_size=batch_size, progress=progress)
    control = capture(model, list(NEUTRAL_TEXTS), hook_name, pool=pool, batch_size=batch_size, progress=progress)
    return result, transfer_report(result, acts, others=others, control=control)
