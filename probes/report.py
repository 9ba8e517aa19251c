"""A self-contained HTML report (plotly inlined once) plus JSON and the chosen probe file."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from probes.generalize import GeneralizationResult
    from probes.sweep import SweepResult


def write_report(
    out: str | os.PathLike,
    result: "SweepResult",
    *,
    generalization: "GeneralizationResult | None" = None,
    acts=None,
    title: str | None = None,
    save_best_probe: bool = True,
) -> dict[str, Path]:
    """Write ``out/report.html`` (metric by layer with CI bands and controls, test-score
    histograms, the generalisation matrix if given, a 2-D projection of ``acts`` at the chosen
    layer if given), ``out/report.json`` and ``out/probe.safetensors`` (the chosen probe).
    Every file is written atomically. Returns their paths."""
    from steerlens.io import write_json, write_text

    from probes import plots
    from probes.io import save_probe

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    b = result.best
    figs = [("Metric by layer", plots.layer_curves(result)), ("Scores per class", plots.score_histogram(result))]
    if generalization is not None:
        figs.append(("Cross-domain generalisation", plots.generalization_heatmap(generalization)))
    if acts is not None:
        X = acts[b["hook"]]
        labels = np.asarray(acts.labels)
        figs.append(("2-D projection", plots.projection(X, labels, result.probe,
                                                          title=f"All examples at layer {b['layer']} ({b['hook']})")))
    title = title or f"Probe report: {result.info.get('dataset') or 'dataset'} on {result.info.get('model') or 'model'}"
    parts = []
    for i, (heading, fig) in enumerate(figs):
        body = fig.to_html(full_html=False, include_plotlyjs=(i == 0))  # plotly.js inlined once
        parts.append(f"<h2>{html.escape(heading)}</h2>\n{body}")
    doc = _HTML.format(title=html.escape(title), summary=_summary(result, generalization), figures="\n".join(parts))
    paths = {"html": out / "report.html", "json": out / "report.json"}
    write_text(paths["html"], doc)
    payload = {"sweep": result.to_dict()}
    if generalization is not None:
        payload["generalization"] = generalization.to_dict()
    if save_best_probe:
        paths["probe"] = save_probe(out / "probe.safetensors", result.probe)
        payload["probe_file"] = "probe.safetensors"
    write_json(paths["json"], payload)
    return paths


def _summary(result: "SweepResult", gen) -> str:
    b = result.best
    t = b["test"]
    ci = t.get("auroc_ci", [float("nan")] * 2)
    rows = [
        ("model", f"{result.info.get('model')} (fingerprint {result.info.get('fingerprint')})"),
        ("dataset", f"{result.info.get('dataset')} (hash {str(result.info.get('dataset_hash'))[:16]}, n = {result.info.get('n')})"),
        ("split (grouped)", ", ".join(f"{k} {len(v)}" for k, v in result.split.items())),
        ("chosen on validation", f"{b['method']} at layer {b['layer']} ({b['hook']}), val AUROC {b['val']['auroc']:.3f}"),
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
    cells = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ text-align: left; padding: 0.25em 1em 0.25em 0; border-bottom: 1px solid #eee; }}
th {{ font-weight: 600; }}
</style></head>
<body>
<h1>{title}</h1>
{summary}
<p>Layer and method are chosen on the validation split only; test metrics are shown for every layer
for the picture, and reported once for the chosen probe. Controls: the same method refitted on shuffled
training labels, and random unit directions (max(AUROC, 1 &minus; AUROC)).</p>
{figures}
</body></html>
"""
