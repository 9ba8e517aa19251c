"""``steerlens tour``: every capability end to end on one model, written as one self-contained HTML
report plus JSON (DESIGN: "run every capability end to end and write one HTML report").

Part of the app layer: it imports ``probes``, ``steer`` and ``editing`` lazily, inside ``run_tour``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

OPENINGS = ("I think this film", "The food at this restaurant", "My week at work", "The new phone I bought")


def layer_span(layers: list[int]) -> str:
    """``[6]`` -> "layer 6", ``[0, 1, ..., 17]`` -> "layers 0–17", ``[2, 4]`` -> "layers 2, 4"."""
    if len(layers) == 1:
        return f"layer {layers[0]}"
    if list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}–{layers[-1]}"
    return "layers " + ", ".join(map(str, layers))


def run_tour(
    model: "TransformerBridge",
    out: str | os.PathLike,
    *,
    steer_layers: list[int] | None = None,
    edit_layer: int | None = None,
    n_facts: int = 3,
    n_tokens: int = 20_000,
    new_tokens: int = 20,
    progress: bool = True,
) -> Path:
    """Capture the shipped ``truthfulness`` statements and their ``negations`` at every layer and
    sweep probes over them (the truth recipe: layer and method chosen by leave-one-family-out AUROC);
    compute a ``sentiment`` steering vector (at ``steer_layers``, default every layer: the default
    recipe), calibrate its coefficient to a 0.3 shift of the
    external judge's (VADER) positive share within the cost limits (perplexity ratio <= 1.3, <= 5%
    degenerate continuations) and generate with and without it; trace and edit ``n_facts`` shipped facts, one relation at a
    time (ROME, key statistics from ``n_tokens`` of the shipped datasets' text), evaluated before
    and after.
    Writes ``out/index.html`` and ``out/tour.json``; returns the HTML path."""
    import probes
    import steer
    from steer.evaluate import NEUTRAL_OPENINGS
    from steer.judges import VaderJudge
    from editing import sites
    from editing.covariance import key_statistics
    from editing.evaluation import evaluate_edits
    from editing.tracing import causal_trace
    from probes import plots

    from steerlens import data
    from steerlens.capturing import capture
    from steerlens.models import fingerprint, model_name

    if n_facts < 1:
        raise ValueError(f"n_facts must be >= 1, got {n_facts}")
    n_layers = int(model.cfg.n_layers)
    steer_layers = list(range(n_layers)) if steer_layers is None else [int(x) for x in steer_layers]
    edit_layer = sites.default_layer(model) if edit_layer is None else sites.check_layer(model, edit_layer)
    seconds: dict[str, float] = {}
    figs: dict[str, list] = {}
    summary: dict[str, Any] = {"model": {"name": model_name(model), "fingerprint": fingerprint(model),
                                         "n_layers": n_layers, "d_model": int(model.cfg.d_model)}}

    # 1-2. capture + probes
    t = time.perf_counter()
    rows = probes.labelled_rows("truth")  # the truth recipe: affirmations + their negations, groups kept
    acts = capture(model, [r["prompt"] for r in rows], "resid_post", rows=rows, batch_size=32, progress=progress)
    sweep = probes.sweep_layers(acts, seed=0, dataset="truth", lofo="family", select="lofo", progress=progress)
    b = sweep.best
    summary["probes"] = {"dataset": "truth", "n": len(rows), "best_layer": b["layer"], "method": b["method"],
                         "test_auroc": b["test"]["auroc"], "test_auroc_ci": b["test"].get("auroc_ci"),
                         "test_auroc_by_layer": [float(x) for x in sweep.curve("auroc", "test", b["method"])]}
    figs["probes"] = [plots.layer_curves(sweep), plots.score_histogram(sweep)]
    seconds["capture_and_probes"] = time.perf_counter() - t

    # 3. steering
    t = time.perf_counter()
    # the default recipe (benchmarks/README.md): mean_diff of mean-pooled pairs at every layer, coefficient calibrated to
    # raise the external judge's positive share by 0.3 on the calibration openings, within the cost limits
    judge = VaderJudge()
    v = steer.calibrate(model, steer.compute(model, "sentiment", layers=steer_layers), target_shift=0.3,
                        judge=judge, prompts=NEUTRAL_OPENINGS, max_new_tokens=new_tokens, ppl_budget=1.3,
                        max_degenerate=0.05, start=1.0, steps=2, progress=progress)
    k = len(OPENINGS)  # one batch: plain rows, then steered rows (one vector per row)
    texts = steer.generate(model, list(OPENINGS) * 2, [None] * k + [v] * k, coeff=[0.0] * k + [v.coeff] * k,
                           max_new_tokens=new_tokens)
    plain, steered = texts[:k], texts[k:]
    cal = v.info["calibration"]
    summary["steer"] = {"dataset": "sentiment", "layers": steer_layers, "coeff": v.coeff, "judge": judge.name,
                        "calibration": cal,
                        "generations": [{"prompt": p, "plain": a, "steered": s, "plain_score": x, "steered_score": y}
                                        for p, a, s, x, y in zip(OPENINGS, plain, steered, judge(plain), judge(steered))]}
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
    return _page(summary, figs).write(out / "index.html", data=summary, data_path=out / "tour.json")


def _fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def _page(s: dict, figs: dict[str, list]):
    from steerlens.report import Page, bold

    m, p, st, ed = s["model"], s["probes"], s["steer"], s["editing"]
    page = Page(f"steerlens tour: {m['name']}")
    secs = ", ".join(f"{k} {v:.0f} s" for k, v in s["seconds"].items())
    page.paragraph(f"{m['n_layers']} layers, d_model {m['d_model']}, fingerprint {m['fingerprint']}. Time: {secs}.")

    page.section("Capture and probes: truthfulness + negations")
    ci = p["test_auroc_ci"]
    page.paragraph(f"{p['n']} statements and negations; chosen by leave-one-family-out AUROC: ", bold(p["method"]), " at layer ",
                   bold(p["best_layer"]), ", test AUROC ", bold(f"{p['test_auroc']:.3f}"),
                   f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else "", ".")
    for f in figs.get("probes", []):
        page.figure(f)

    page.section("Steering: sentiment")
    cal = st.get("calibration") or {}
    base = cal.get("baseline", {})
    page.paragraph(
        f"Mean difference of the mean-pooled {st['dataset']} pairs at {layer_span(st['layers'])}, added at every position "
        f"with coefficient {st['coeff']:.3g}: the smallest tried that raises the share of continuations the external "
        f"judge ({st['judge']}, a sentiment lexicon that never sees an activation) scores positive by "
        f"{cal.get('target_shift', 0):g} on {len(cal.get('prompts', []))} calibration openings, with perplexity on "
        f"neutral text up at most {100 * ((cal.get('ppl_budget') or 1) - 1):.0f}% and at most "
        f"{100 * (cal.get('max_degenerate') or 0):.0f}% degenerate continuations"
        + ("" if cal.get("reached") else " (not reached on this model: the largest shift within those limits)")
        + f". Positive share {base.get('positive_share', 0):.2f} → {cal.get('positive_share', 0):.2f}, negative "
        f"{base.get('negative_share', 0):.2f} → {cal.get('negative_share', 0):.2f}, perplexity ratio "
        f"{cal.get('ppl_ratio', 1):.3f}, KL {cal.get('kl', 0):.3f} nats. Greedy generations (judge score in [−1, 1]):")
    page.table([[g["prompt"], g["plain"], g["plain_score"], g["steered"], g["steered_score"]] for g in st["generations"]],
               ["prompt", "plain", "score", "steered", "score"], fmt=_fmt)

    page.section("Editing: ROME")
    page.paragraph(f"{len(ed['edits'])} facts rewritten one at a time at layer {ed['layer']} (ROME, key statistics "
                   f"from {ed['n_tokens']} tokens of the shipped datasets' text), each evaluated and reverted.")
    keys = ["efficacy", "paraphrase", "neighbourhood", "fluency", "true_in_top10", "perplexity"]
    page.table([[k, ed["before"].get(k), ed["after"].get(k)] for k in keys], ["metric", "before", "after"], fmt=_fmt)
    page.table([[e["prompt"], e["target_true"], e["target_new"], e["steps"]] for e in ed["edits"]],
               ["prompt", "true", "new", "steps"], fmt=_fmt)
    page.paragraph("Causal trace of the first fact:")
    for f in figs.get("editing", []):
        page.figure(f)

    page.section("All numbers")
    page.preformatted(json.dumps(s, indent=1, default=str))
    return page
