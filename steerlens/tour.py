"""``steerlens tour``: every capability end to end on one model, written as one self-contained HTML
report plus JSON (DESIGN: "run every capability end to end and write one HTML report").

Like the CLI, this module alone (with ``steerlens.cli``) imports ``probes``, ``steer`` and
``editing``, lazily, inside ``run_tour``.
"""

from __future__ import annotations

import html
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

OPENINGS = ("I think this film", "The food at this restaurant", "My week at work", "The new phone I bought")


def run_tour(
    model: "TransformerBridge",
    out: str | os.PathLike,
    *,
    steer_layer: int | None = None,
    edit_layer: int | None = None,
    n_facts: int = 3,
    n_tokens: int = 20_000,
    new_tokens: int = 20,
    progress: bool = True,
) -> Path:
    """Capture the shipped ``truthfulness`` statements at every layer and sweep probes over them;
    compute a ``sentiment`` steering vector, calibrate its coefficient to a KL budget of 0.1 nats
    and generate with and without it; trace and edit ``n_facts`` shipped facts, one relation at a
    time (ROME, key statistics from ``n_tokens`` of the shipped datasets' text), evaluated before
    and after.
    Writes ``out/index.html`` and ``out/tour.json``; returns the HTML path."""
    import probes
    import steer
    from editing import _model as M
    from editing.covariance import key_statistics
    from editing.evaluation import evaluate_edits
    from editing.tracing import causal_trace
    from probes import plots

    from steerlens import data
    from steerlens.capturing import capture
    from steerlens.io import write_json, write_text
    from steerlens.models import fingerprint, model_name

    if n_facts < 1:
        raise ValueError(f"n_facts must be >= 1, got {n_facts}")
    n_layers = int(model.cfg.n_layers)
    steer_layer = n_layers // 3 if steer_layer is None else steer_layer
    edit_layer = M.default_layer(model) if edit_layer is None else M.check_layer(model, edit_layer)
    seconds: dict[str, float] = {}
    figs: dict[str, list] = {}
    summary: dict[str, Any] = {"model": {"name": model_name(model), "fingerprint": fingerprint(model),
                                         "n_layers": n_layers, "d_model": int(model.cfg.d_model)}}

    # 1-2. capture + probes
    t = time.perf_counter()
    rows = probes.labelled_rows("truthfulness")
    acts = capture(model, [r["prompt"] for r in rows], "resid_post", rows=rows, batch_size=32, progress=progress)
    sweep = probes.sweep_layers(acts, seed=0, dataset="truthfulness", progress=progress)
    b = sweep.best
    summary["probes"] = {"dataset": "truthfulness", "n": len(rows), "best_layer": b["layer"], "method": b["method"],
                         "test_auroc": b["test"]["auroc"], "test_auroc_ci": b["test"].get("auroc_ci"),
                         "test_auroc_by_layer": [float(x) for x in sweep.curve("auroc", "test", b["method"])]}
    figs["probes"] = [plots.layer_curves(sweep), plots.score_histogram(sweep)]
    seconds["capture_and_probes"] = time.perf_counter() - t

    # 3. steering
    t = time.perf_counter()
    v = steer.calibrate(model, steer.compute(model, "sentiment", layers=[steer_layer]), kl_budget=0.1, steps=3)
    k = len(OPENINGS)  # one batch: plain rows, then steered rows (one vector per row)
    texts = steer.generate(model, list(OPENINGS) * 2, [None] * k + [v] * k, coeff=[0.0] * k + [v.coeff] * k,
                           max_new_tokens=new_tokens)
    plain, steered = texts[:k], texts[k:]
    summary["steer"] = {"dataset": "sentiment", "layer": steer_layer, "coeff": v.coeff,
                        "calibration": v.info.get("calibration"),
                        "generations": [{"prompt": p, "plain": a, "steered": s} for p, a, s in zip(OPENINGS, plain, steered)]}
    seconds["steer"] = time.perf_counter() - t

    # 4. editing
    t = time.perf_counter()
    facts = data.round_robin(data.load("facts"), n_facts)  # one relation at a time
    stats = key_statistics(model, edit_layer, corpus="shipped", n_tokens=n_tokens, progress=progress)
    report = evaluate_edits(model, facts, layer=edit_layer, stats=stats, fluency_samples=1, fluency_tokens=16,
                            progress=progress)
    trace = causal_trace(model, facts[0].prompt, facts[0].subject, target=facts[0].target_true, samples=3,
                         progress=progress)
    summary["editing"] = {"layer": edit_layer, "corpus": "shipped", "n_tokens": stats.n,
                          "before": report.before.summary(), "after": report.after.summary(),
                          "edits": report.edits}
    figs["editing"] = trace.figures()
    seconds["editing"] = time.perf_counter() - t
    summary["seconds"] = seconds

    out = Path(out)
    write_json(out / "tour.json", summary)
    write_text(out / "index.html", _html(summary, figs))
    return out / "index.html"


def _fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, float) else html.escape(str(x))


def _table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _html(s: dict, figs: dict[str, list]) -> str:
    plotted = [0]

    def plots(key: str) -> str:
        parts = []
        for f in figs.get(key, []):
            parts.append(f.to_html(full_html=False, include_plotlyjs=plotted[0] == 0))  # plotly.js inlined once
            plotted[0] += 1
        return "".join(parts)

    m, p, st, ed = s["model"], s["probes"], s["steer"], s["editing"]
    ci = p["test_auroc_ci"]
    probe_txt = (f"<p>{p['n']} statements; chosen on validation: <b>{p['method']}</b> at layer <b>{p['best_layer']}</b>, "
                 f"test AUROC <b>{p['test_auroc']:.3f}</b>" + (f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else "") + ".</p>")
    cal = st.get("calibration") or {}
    steer_txt = (f"<p>Mean difference of the {html.escape(st['dataset'])} pairs at layer {st['layer']}, added at every "
                 f"position with coefficient {st['coeff']:.3g} (the largest with KL ≤ 0.1 nats on neutral text"
                 + (f"; KL {cal['kl']:.3f}" if "kl" in cal else "") + "). Greedy generations:</p>"
                 + _table(["prompt", "plain", "steered"], [[g["prompt"], g["plain"], g["steered"]] for g in st["generations"]]))
    keys = ["efficacy", "paraphrase", "neighbourhood", "fluency", "true_in_top10", "perplexity"]
    edit_txt = (f"<p>{len(ed['edits'])} facts rewritten one at a time at layer {ed['layer']} (ROME, key statistics from "
                f"{ed['n_tokens']} tokens of the shipped datasets' text), each evaluated and reverted.</p>"
                + _table(["metric", "before", "after"], [[k, ed["before"].get(k), ed["after"].get(k)] for k in keys])
                + _table(["prompt", "true", "new", "steps"],
                         [[e["prompt"], e["target_true"], e["target_new"], e["steps"]] for e in ed["edits"]])
                + "<p>Causal trace of the first fact:</p>")
    secs = ", ".join(f"{k} {v:.0f} s" for k, v in s["seconds"].items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>steerlens tour: {html.escape(m['name'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px;vertical-align:top}}</style></head><body>
<h1>steerlens tour: {html.escape(m['name'])}</h1>
<p>{m['n_layers']} layers, d_model {m['d_model']}, fingerprint {html.escape(m['fingerprint'])}. Time: {html.escape(secs)}.</p>
<h2>Capture and probes: truthfulness</h2>{probe_txt}{plots('probes')}
<h2>Steering: sentiment</h2>{steer_txt}
<h2>Editing: ROME</h2>{edit_txt}{plots('editing')}
<h2>All numbers</h2><pre>{html.escape(json.dumps(s, indent=1, default=str))}</pre>
</body></html>"""
