"""The report of an ``EditReport``: a self-contained page (``steerlens.report``) and ``report.json``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from editing.erasure import ErasureResult
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
    return str(x)


def write_report(report: "EditReport | ErasureResult", out: str | os.PathLike, *, traces: list["CausalTrace"] = (),
                 title: str | None = None) -> Path:
    """Write the report of an edit run into the directory ``out`` (created if missing):
    ``report.html`` (before/after scores, one row per edit, plots, the causal ``traces`` given,
    the settings) and ``report.json``, both atomically. Returns the path of ``out/report.html``.
    An ``ErasureResult`` (``editing.run_erasure``) gets its own page
    (``editing.erasure_report.write_erasure_report``), in the same two files."""
    from editing.erasure import ErasureResult

    if isinstance(report, ErasureResult):
        from editing.erasure_report import write_erasure_report

        return write_erasure_report(report, out, **({} if title is None else {"title": title}))
    title = "Edit report" if title is None else title
    import plotly.graph_objects as go

    from steerlens.report import Page, bold

    data = report.to_dict()
    data["traces"] = [t.to_dict() for t in traces]
    b, a = data["summary"]["before"], data["summary"]["after"]
    erase = report.mode == "erase"
    per = []
    for e, fb, fa in zip(report.edits, report.before.facts, report.after.facts):
        cols = ([fb.p_true, fa.p_true, fb.rank_true, fa.rank_true] if erase
                else [fb.efficacy_magnitude, fa.efficacy_magnitude, fa.paraphrase])
        cols += [fb.neighbourhood, fa.neighbourhood, fb.fluency, fa.fluency, e["steps"]]
        per.append([e["prompt"], f"{e['target_true']!r}" + ("" if erase else f" → {e['target_new']!r}"), *cols])
    head = (["P(true) before", "P(true) after", "rank before", "rank after"] if erase
            else ["P(new)−P(true) before", "after", "paraphrase after"])
    head += ["neighbourhood before", "after", "fluency before", "after", "steps"]

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

    page = Page(title)
    page.paragraph("mode: ", bold(report.mode), ", ",
                   "stacked" if report.stacked else "one edit at a time (each reverted before the next)",
                   f", layer {report.layer}, {len(report.edits)} edits.")
    page.section("Before / after")
    page.table([[label, b.get(k), a.get(k)] for k, label in _SUMMARY_ROWS], ["metric", "before", "after"], fmt=_fmt)
    page.section("Per edit")
    page.table(per, ["prompt", "object", *head], fmt=_fmt)
    page.section("Plots")
    for f in figs:
        page.figure(f)
    page.section("Settings")
    page.preformatted(json.dumps(data["info"], indent=1, default=str))
    return page.write(Path(out) / "report.html", data=data)
