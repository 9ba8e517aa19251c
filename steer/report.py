"""Steering reports: a self-contained page (``steerlens.report``) and ``report.json`` for a sweep,
or for a vector calibrated to a behaviour shift (its effect–cost curve)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from steer.evaluate import SteeringSweep
    from steer.vector import SteeringVector


def write_report(result: "SteeringSweep | SteeringVector", out: str | os.PathLike, *, n_samples: int = 4) -> Path:
    """Write the report of a steering sweep into the directory ``out`` (created if missing):
    ``report.html`` (behaviour and cost by coefficient, the numbers, ``n_samples`` generations per
    coefficient, the vector's metadata) and ``report.json``, both atomically. Returns the path of
    ``out/report.html``. A vector from ``calibrate(target_shift=...)`` gets its effect–cost curve
    with the chosen coefficient marked, and the numbers of every coefficient tried."""
    from steer.vector import SteeringVector

    if isinstance(result, SteeringVector):
        cal = (result.info or {}).get("calibration")
        if not isinstance(cal, dict) or cal.get("mode") != "behaviour":
            raise ValueError("write_report takes a SteeringSweep or a vector from calibrate(target_shift=...)")
        return _calibration_page(result).write(Path(out) / "report.html", data={
            "vector": {k: v for k, v in result.metadata().items() if k != "info"}, "calibration": cal})
    return _page(result, n_samples=n_samples).write(Path(out) / "report.html", data=result.to_dict())


def _calibration_page(vector: "SteeringVector"):
    from steer.plots import calibration_figure
    from steerlens.report import Page, bold

    cal = vector.info["calibration"]
    page = Page("steerlens steering calibration", heading="Calibration to a behaviour shift")
    page.paragraph(f"Target: a shift of {cal['target_shift']:g} in ", bold(cal["metric"]), " judged by ", bold(cal["judge"]),
                   f" on {len(cal['prompts'])} prompts ({cal['max_new_tokens']} greedy tokens each), unsteered "
                   f"{cal['baseline']['value']:.3f}. Chosen coefficient: ", bold(f"{vector.coeff:.4g}"),
                   " (target reached)." if cal["reached"] else " (target NOT reached: the largest shift within the caps).")
    page.figure(calibration_figure(cal))
    page.section("Numbers")
    fmt = lambda x: "" if x is None else f"{x:.4g}"  # noqa: E731
    page.table([[fmt(t["coeff"]), fmt(t["shift"]), fmt(t["positive_share"]), fmt(t["negative_share"]), fmt(t["kl"]),
                 fmt(t["ppl_ratio"]), fmt(t["degenerate"]), "yes" if t["ok"] else ""]
                for t in [cal["baseline"] | {"shift": 0.0, "ok": False}] + cal["tried"]],
               ["coeff", "shift", "positive share", "negative share", "KL", "ppl ratio", "degenerate", "reached"])
    page.section("Vector")
    page.table([(k, v) for k, v in vector.metadata().items() if k != "info"], header_column=True)
    return page


def _page(result: "SteeringSweep", *, n_samples: int = 4):
    from steerlens.report import HTML, Page, bold, escape

    page = Page("steerlens steering sweep", heading="Steering sweep")
    page.paragraph("Behaviour: ", bold(result.behaviour), ". Cost on neutral text (steered at every position): "
                   f"KL(p_base ‖ p_steered) per position and perplexity (unsteered: {result.baseline_ppl:.4g}). "
                   "Control: a random direction with the same norm per layer.")
    page.figure(result.figure())
    page.section("Numbers")
    opt = lambda x: "" if x is None else f"{x:.4g}"  # noqa: E731
    page.table([[name, f"{p.coeff:g}", opt(p.behaviour), opt(p.positive_share), opt(p.negative_share), f"{p.kl:.4g}",
                 f"{p.ppl:.4g}", f"{p.ppl_ratio:.4g}", opt(p.degenerate)]
                for name, points in (("vector", result.points), ("control", result.control)) for p in points],
               ["run", "coeff", "behaviour", "positive share", "negative share", "KL", "ppl", "ppl ratio", "degenerate"])
    page.section("Samples (vector)")
    for p in result.points:
        page.section(f"coefficient {p.coeff:g}", level=3)
        pairs = list(zip(result.prompts, p.samples))[:n_samples]
        page.bullets(HTML(bold(prompt) + escape(text)) for prompt, text in pairs)
    page.section("Vector")
    page.table(list(result.meta.get("vector", {}).items()), header_column=True)
    return page
