"""The steering-sweep report: a self-contained page (``steerlens.report``) and ``report.json``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from steer.evaluate import SteeringSweep


def write_report(result: "SteeringSweep", out: str | os.PathLike, *, n_samples: int = 4) -> Path:
    """Write the report of a steering sweep into the directory ``out`` (created if missing):
    ``report.html`` (behaviour and cost by coefficient, the numbers, ``n_samples`` generations per
    coefficient, the vector's metadata) and ``report.json``, both atomically. Returns the path of
    ``out/report.html``."""
    return _page(result, n_samples=n_samples).write(Path(out) / "report.html", data=result.to_dict())


def _page(result: "SteeringSweep", *, n_samples: int = 4):
    from steerlens.report import HTML, Page, bold, escape

    page = Page("steerlens steering sweep", heading="Steering sweep")
    page.paragraph("Behaviour: ", bold(result.behaviour), ". Cost on neutral text (steered at every position): "
                   f"KL(p_base ‖ p_steered) per position and perplexity (unsteered: {result.baseline_ppl:.4g}). "
                   "Control: a random direction with the same norm per layer.")
    page.figure(result.figure())
    page.section("Numbers")
    page.table([[name, f"{p.coeff:g}", "" if p.behaviour is None else f"{p.behaviour:.4g}", f"{p.kl:.4g}",
                 f"{p.ppl:.4g}", f"{p.ppl_ratio:.4g}"]
                for name, points in (("vector", result.points), ("control", result.control)) for p in points],
               ["run", "coeff", "behaviour", "KL", "ppl", "ppl ratio"])
    page.section("Samples (vector)")
    for p in result.points:
        page.section(f"coefficient {p.coeff:g}", level=3)
        pairs = list(zip(result.prompts, p.samples))[:n_samples]
        page.bullets(HTML(bold(prompt) + escape(text)) for prompt, text in pairs)
    page.section("Vector")
    page.table(list(result.meta.get("vector", {}).items()), header_column=True)
    return page
