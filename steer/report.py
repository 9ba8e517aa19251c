"""Self-contained sweep reports: ``report.html`` (plotly inlined, no network needed) and
``report.json``, both written atomically."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from steer.evaluate import SweepResult


def write_report(result: "SweepResult", out: str | os.PathLike, *, n_samples: int = 4) -> Path:
    """Write ``out/report.html`` and ``out/report.json``; returns ``out``."""
    from steerlens.io import write_json, write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", result.to_dict())
    write_text(out / "report.html", render_html(result, n_samples=n_samples))
    return out


def render_html(result: "SweepResult", *, n_samples: int = 4) -> str:
    fig_html = result.figure().to_html(full_html=False, include_plotlyjs=True)
    e = html.escape
    vec = result.meta.get("vector", {})
    rows = []
    for name, points in (("vector", result.points), ("control", result.control)):
        for p in points:
            b = "" if p.behaviour is None else f"{p.behaviour:.4g}"
            rows.append(f"<tr><td>{name}</td><td>{p.coeff:g}</td><td>{b}</td><td>{p.kl:.4g}</td>"
                        f"<td>{p.ppl:.4g}</td><td>{p.ppl_ratio:.4g}</td></tr>")
    samples = []
    for p in result.points:
        items = "".join(f"<li><b>{e(prompt)}</b>{e(text)}</li>"
                        for prompt, text in list(zip(result.prompts, p.samples))[:n_samples])
        samples.append(f"<h3>coefficient {p.coeff:g}</h3><ul>{items}</ul>")
    meta = "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in vec.items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>steerlens steering sweep</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}li{{margin:4px 0}}</style></head>
<body><h1>Steering sweep</h1>
<p>Behaviour: <b>{e(result.behaviour)}</b>. Cost on neutral text (steered at every position):
KL(p_base ‖ p_steered) per position and perplexity (unsteered: {result.baseline_ppl:.4g}).
Control: a random direction with the same norm per layer.</p>
{fig_html}
<h2>Numbers</h2><table><tr><th>run</th><th>coeff</th><th>behaviour</th><th>KL</th><th>ppl</th><th>ppl ratio</th></tr>
{''.join(rows)}</table>
<h2>Samples (vector)</h2>{''.join(samples)}
<h2>Vector</h2><table>{meta}</table>
</body></html>
"""
