"""A self-contained HTML + JSON report of an ``EditReport`` (plotly inlined, written atomically)."""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from steerlens.io import write_json, write_text

if TYPE_CHECKING:
    from editing.evaluation import EditReport
    from editing.tracing import CausalTrace

_SUMMARY_ROWS = [
    ("efficacy", "efficacy score: P(new) > P(true) on the prompt"),
    ("efficacy_magnitude", "efficacy magnitude: P(new) − P(true)"),
    ("paraphrase", "paraphrase score"),
    ("paraphrase_magnitude", "paraphrase magnitude"),
    ("neighbourhood", "neighbourhood score: P(true) > P(new) on other subjects"),
    ("neighbourhood_magnitude", "neighbourhood magnitude"),
    ("neighbourhood_top1", "neighbourhood: true object still top-1"),
    ("p_true", "P(true object, first token) on the prompt"),
    ("true_in_top10", "true object in the top-10 on the prompt"),
    ("paraphrase_true_in_top10", "true object in the top-10 on paraphrases"),
    ("fluency", "fluency: n-gram entropy of sampled text (bits)"),
    ("perplexity", "perplexity on neutral text"),
    ("kl", "KL(unedited ‖ edited) on neutral text (nats/token)"),
]


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.3f}"
    return html.escape(str(x))


def write_report(report: "EditReport", out: str | os.PathLike, *, traces: list["CausalTrace"] = (), title: str = "Edit report") -> Path:
    """Write ``out/report.html`` and ``out/report.json``; returns the HTML path."""
    import plotly.graph_objects as go

    out = Path(out)
    data = report.to_dict()
    data["traces"] = [t.to_dict() for t in traces]
    b, a = data["summary"]["before"], data["summary"]["after"]
    rows = "".join(f"<tr><td>{html.escape(label)}</td><td>{_fmt(b.get(k))}</td><td>{_fmt(a.get(k))}</td></tr>"
                   for k, label in _SUMMARY_ROWS)
    per = []
    erase = report.mode == "erase"
    for e, fb, fa in zip(report.edits, report.before.facts, report.after.facts):
        cols = ([_fmt(fb.p_true), _fmt(fa.p_true), _fmt(fb.rank_true), _fmt(fa.rank_true)] if erase
                else [_fmt(fb.efficacy_magnitude), _fmt(fa.efficacy_magnitude), _fmt(fa.paraphrase)])
        cols += [_fmt(fb.neighbourhood), _fmt(fa.neighbourhood), _fmt(fb.fluency), _fmt(fa.fluency), _fmt(e["steps"])]
        target = html.escape(f"{e['target_true']!r}" + ("" if erase else f" → {e['target_new']!r}"))
        per.append(f"<tr><td>{html.escape(e['prompt'])}</td><td>{target}</td>" + "".join(f"<td>{c}</td>" for c in cols) + "</tr>")
    head = (["P(true) before", "P(true) after", "rank before", "rank after"] if erase
            else ["P(new)−P(true) before", "after", "paraphrase after"])
    head += ["neighbourhood before", "after", "fluency before", "after", "steps"]
    per_table = ("<table><tr><th>prompt</th><th>object</th>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
                 + "".join(per) + "</table>")

    keys = ["efficacy", "paraphrase", "neighbourhood", "neighbourhood_top1", "true_in_top10"]
    fig = go.Figure([go.Bar(name="before", x=keys, y=[b[k] for k in keys]), go.Bar(name="after", x=keys, y=[a[k] for k in keys])])
    fig.update_layout(title="Scores before and after", barmode="group", yaxis_range=[0, 1.05])
    figs = [fig]
    if erase:
        f2 = go.Figure([go.Bar(name="before", y=[f.p_true for f in report.before.facts]),
                        go.Bar(name="after", y=[f.p_true for f in report.after.facts])])
        f2.update_layout(title="P(true object) on each edit prompt", barmode="group", xaxis_title="edit")
    else:
        f2 = go.Figure([go.Bar(name=n, y=[getattr(f, "efficacy_magnitude") for f in ev.facts])
                        for n, ev in (("before", report.before), ("after", report.after))])
        f2.update_layout(title="P(new) − P(true) on each edit prompt", barmode="group", xaxis_title="edit")
    figs.append(f2)
    for t in traces:
        figs += t.figures()
    plots = "".join(f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs))
    info = html.escape(json.dumps(data["info"], indent=1, default=str))
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>mode: <b>{report.mode}</b>, {'stacked' if report.stacked else 'one edit at a time (each reverted before the next)'},
layer {report.layer}, {len(report.edits)} edits.</p>
<h2>Before / after</h2><table><tr><th>metric</th><th>before</th><th>after</th></tr>{rows}</table>
<h2>Per edit</h2>{per_table}
<h2>Plots</h2>{plots}
<h2>Settings</h2><pre>{info}</pre></body></html>"""
    write_json(out / "report.json", data)
    write_text(out / "report.html", doc)
    return out / "report.html"
