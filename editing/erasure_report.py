"""The report of an ``ErasureResult``: one self-contained page (``steerlens.report``) and ``report.json``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from editing.erasure import ErasureResult

_COLUMNS = [
    ("method", "method"), ("rank", "rank"), ("concept_before", "concept AUROC before"),
    ("concept_after", "after"), ("concept_unseen_before", "probe on unseen groups: before"),
    ("concept_unseen_after", "after"), ("out_of_family_mean", "out of family (mean)"), ("out_of_family_max", "(max)"),
    ("control_before", "control AUROC before"), ("control_after", "after"), ("kl", "KL (nats/token)"),
    ("perplexity", "perplexity"), ("random_kl", "random subspace KL"), ("random_perplexity", "random perplexity"),
    ("random_concept_after", "random: concept AUROC"),
]


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.4f}" if abs(x) < 0.01 else f"{x:.3f}"
    return str(x)


def write_erasure_report(result: "ErasureResult", out: str | os.PathLike, *,
                         title: str = "Concept erasure report") -> Path:
    """Write ``out/report.html`` (summary table, AUROC by layer, out of family per family, KL next to
    the random control, greedy generations, settings) and ``out/report.json``, both atomically;
    returns the path of ``report.html``."""
    from steerlens.report import Page, bold

    spec = result.spec
    page = Page(title)
    page.paragraph("Concept ", bold(f"{spec.concept!r} of {spec.dataset}"), f", erased at resid_post of layer {spec.layer}; "
                   f"control concept: {spec.control or 'none'}; {result.info.get('n_rows')} rows "
                   f"({result.info.get('split')}, split by group). Every probe is a LogisticProbe re-trained on "
                   "erased activations and scored on held-out groups: trained on the eraser's own fitting rows "
                   "(concept AUROC), or on groups the eraser never saw (unseen groups); out of family, on a "
                   "family the eraser never saw. The random control erases a random subspace of the same rank "
                   "at the same layers.")
    page.section("Summary")
    rows = result.summary()
    page.table([[r[k] for k, _ in _COLUMNS] for r in rows], [h for _, h in _COLUMNS], fmt=_fmt)
    page.paragraph(f"Before erasure: perplexity {_fmt(result.before['perplexity'])} on neutral text.")
    page.section("Out of family")
    oof_rows = []
    for name, m in result.methods.items():
        for fam, v in ((m.get("out_of_family") or {}).get("by_family") or {}).items():
            oof_rows.append([name, fam, v["before"], v["after"]])
    if oof_rows:
        page.table(oof_rows, ["method", "held-out family", "AUROC before", "after"], fmt=_fmt)
    page.section("Plots")
    for f in result.figures():
        page.figure(f)
    page.section("Generations (greedy)")
    gens = [["(none)", p, g] for p, g in zip(spec.prompts, result.before["generations"])]
    for name, m in result.methods.items():
        gens += [[name, p, g] for p, g in zip(spec.prompts, m["generations"])]
    page.table(gens, ["method", "prompt", "continuation"])
    notes = [f"{name}: {n}" for name, m in result.methods.items() for n in m.get("notes", [])]
    if notes:
        page.section("Notes")
        page.bullets(notes)
    page.section("Settings")
    page.preformatted(json.dumps({"spec": spec.to_dict(), "info": result.info}, indent=1, default=str))
    return page.write(Path(out) / "report.html", data=result.to_dict())
