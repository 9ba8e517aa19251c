"""The sweep report: a self-contained HTML page (``steerlens.report``) plus JSON and the chosen
probe file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from probes.generalize import GeneralizationResult
    from probes.sweep import LayerSweep
    from probes.transfer import TransferReport


def write_report(
    result: "LayerSweep",
    out: str | os.PathLike,
    *,
    generalization: "GeneralizationResult | None" = None,
    transfer: "TransferReport | None" = None,
    acts=None,
    title: str | None = None,
    save_best_probe: bool = True,
) -> Path:
    """Write the report of a layer sweep into the directory ``out`` (created if missing):
    ``report.html`` (metric by layer with CI bands and controls, test-score histograms, the
    generalisation matrix if given, the transfer table of ``probes.transfer_report`` if given:
    AUROC per dataset and family, "reads this family backwards" below 0.5, and the neutral-text
    operating point; with leave-one-family-out scores, the layer each criterion picks), a 2-D
    projection of ``acts`` at the chosen layer if given), ``report.json`` and, with ``save_best_probe``, ``probe.safetensors`` (the chosen probe).
    Every file is written atomically. Returns the path of ``out/report.html``."""
    from steerlens.report import Page

    from probes import plots
    from probes.io import save_probe

    if isinstance(result, (str, os.PathLike)):
        raise TypeError("write_report takes the sweep result first, then the output directory: "
                        "write_report(result, out)")
    out = Path(out)
    b = result.best
    figs = [("Metric by layer", plots.layer_curves(result)), ("Scores per class", plots.score_histogram(result))]
    if generalization is not None:
        figs.append(("Cross-domain generalisation", plots.generalization_heatmap(generalization)))
    if acts is not None:
        X = acts[b["hook"]]
        labels = np.asarray(acts.labels)
        figs.append(("2-D projection", plots.projection(X, labels, result.probe,
                                                          title=f"All examples at layer {b['layer']} ({b['hook']})")))
    page = Page(title or f"Probe report: {result.info.get('dataset') or 'dataset'} on {result.info.get('model') or 'model'}")
    page.table(_summary(result, generalization), header_column=True)
    page.paragraph(_NOTE)
    if result.picks.get("lofo"):
        page.section("Layer choice: validation split vs leave-one-family-out")
        page.table([[k, p["method"], p["layer"], f"{p['val_auroc']:.3f}", f"{p['lofo_auroc']:.3f}", f"{p['lofo_min']:.3f}",
                     f"{p['test_auroc']:.3f}", "yes" if k == result.select else ""]
                    for k, p in result.picks.items()],
                   ["criterion", "method", "layer", "val AUROC", "LOFO AUROC (mean)", "LOFO AUROC (min)", "test AUROC",
                    "chosen"])
    if transfer is not None:
        page.section(f"Transfer of the chosen probe ({transfer.method} at layer {transfer.layer})")
        pct = f"{100 * transfer.fpr:g}%"
        head = ["dataset", "family", "n", "held out", "AUROC", ""]
        if transfer.n_control:
            head += [f"true flagged at {pct} neutral FPR", f"false flagged at {pct} neutral FPR"]
        page.table([[r["dataset"], r["family"], r["n"], r["held_out"], f"{r['auroc']:.3f}",
                     "reads this family backwards" if r["backwards"] else ""]
                    + ([f"{r['pos_at_fpr']:.2f}", f"{r['neg_at_fpr']:.2f}"] if transfer.n_control else [])
                    for r in transfer.rows], head)
        if transfer.n_control:
            page.paragraph(f"Operating point: thresholds set on {transfer.n_control} neutral sentences scored by the same "
                           f"probe, so that at most {pct} of them (rounded down) score beyond either threshold.")
    for heading, fig in figs:
        page.section(heading)
        page.figure(fig)
    payload = {"sweep": result.to_dict()}
    if generalization is not None:
        payload["generalization"] = generalization.to_dict()
    if transfer is not None:
        payload["transfer"] = transfer.to_dict()
    if save_best_probe:
        save_probe(out / "probe.safetensors", result.probe)
        payload["probe_file"] = "probe.safetensors"
    return page.write(out / "report.html", data=payload)


def _summary(result: "LayerSweep", gen) -> list[tuple[str, str]]:
    b = result.best
    t = b["test"]
    ci = t.get("auroc_ci", [float("nan")] * 2)
    rows = [
        ("model", f"{result.info.get('model')} (fingerprint {result.info.get('fingerprint')})"),
        ("dataset", f"{result.info.get('dataset')} (hash {str(result.info.get('dataset_hash'))[:16]}, n = {result.info.get('n')})"),
        ("split (grouped)", ", ".join(f"{k} {len(v)}" for k, v in result.split.items())),
        (f"chosen by {'leave-one-family-out' if result.select == 'lofo' else 'validation'}",
         f"{b['method']} at layer {b['layer']} ({b['hook']}), val AUROC {b['val']['auroc']:.3f}"
         + (f", LOFO AUROC {b['lofo']['auroc']:.3f}" if "lofo" in b else "")),
        ("test AUROC", f"{t['auroc']:.3f} (95% CI {ci[0]:.3f}–{ci[1]:.3f})"),
        ("test accuracy", f"{t['accuracy']:.3f}"),
        ("TPR at 1% FPR", f"{t['tpr_at_1pct_fpr']:.3f}"),
        ("calibration error (ECE)", f"{t['ece']:.3f}"),
    ]
    for k, v in b.get("control", {}).items():
        rows.append((f"control: {k.replace('_', ' ')}", f"{v:.3f} (selectivity {t['auroc'] - v:+.3f})"))
    if gen is not None:
        off = gen.off_diagonal()
        rows.append(("generalisation", f"{gen.method} at layer {gen.layer}: off-diagonal AUROC {off.min():.2f}–{off.max():.2f}"))
    return rows


_NOTE = ("Layer and method are chosen on the validation split only; test metrics are shown for every layer "
         "for the picture, and reported once for the chosen probe. Controls: the same method refitted on shuffled "
         "training labels, and random unit directions (max(AUROC, 1 − AUROC)).")
