"""Benchmark the probes package on the embedded Gemma 3 270M.

1. Sweep time: all 18 layers x 3 methods (logistic, mass-mean, LDA) with controls and bootstrap
   CIs, on truthfulness activations captured beforehand; per layer and per method.
2. Generalisation (reported whatever it shows): the logistic probe trained per family and tested
   on every other family (matrix), and the best truthfulness probe scored on the `negations`
   and `arithmetic` datasets. Then the transfer table of the old and the new truth recipe side
   by side (`probes.transfer_report`): old = trained on `truthfulness` alone, layer and method
   chosen on validation; new = trained on `truthfulness` + `negations` (`labelled_rows("truth")`,
   groups kept), chosen by leave-one-family-out AUROC. AUROC per dataset and family on held-out
   rows (test split; `arithmetic` never trained on), and the share of false / true statements
   flagged at 1% FPR on the neutral control sentences (`steerlens.neutral.NEUTRAL_TEXTS`).
3. Monitor cost: greedy generation tokens/s (KV cache on) with and without a ProbeMonitor (one
   probe per method, each at its own best layer), measured in the same run after a warm-up, as
   paired runs on the same prompt in alternating order; median of the paired ratios.
   Target: monitored / unmonitored >= 0.97.

    python benchmarks/bench_probes.py            # full
    python benchmarks/bench_probes.py --quick    # fewer generation repeats
    python benchmarks/bench_probes.py --transfer-only   # just the old/new recipe transfer table
    python benchmarks/bench_probes.py --general-direction   # is there a truth direction shared by families?

``--general-direction`` (issue 15's "why"): per layer, leave-one-family-out AUROC on
`truthfulness` + `negations` (train on three topic families, affirmations and negations, score
the fourth) of the logistic probe (C = 0.1) and of the general truth direction t_G of Bürger et
al. 2024 ("Truth is Universal", arXiv:2407.12831, eq. 1: a_ij = mu_i + tau_ij t_G + tau_ij p_ij
t_P, fitted by least squares on activations centred per family; tau = +-1 truth, p = +-1
polarity), and of their TTPD classifier (logistic regression on the projections onto t_G and a
learned polarity direction). Each family is centred on its own mean (no labels used).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="Fewer generation repeats and tokens.")
    ap.add_argument("--dataset", default="truthfulness")
    ap.add_argument("--torch-threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine; 0: torch's default).")
    ap.add_argument("--blas-threads", type=int, default=1, help="BLAS threads during the sweep (sweep_layers' threads=).")
    ap.add_argument("--repeats", type=int, default=None, help="Paired generations (default 30, quick 6).")
    ap.add_argument("--new-tokens", type=int, default=None, help="Tokens per generation (default 24, quick 12).")
    ap.add_argument("--transfer-only", action="store_true", help="Only the old/new truth recipe transfer table.")
    ap.add_argument("--general-direction", action="store_true",
                    help="Only the leave-one-family-out table of the logistic probe, t_G and TTPD per layer.")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "out" / "probes.json", help="Where to write the figures.")
    args = ap.parse_args()
    repeats = args.repeats or (6 if args.quick else 30)
    new_tokens = args.new_tokens or (12 if args.quick else 24)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    import steerlens
    from probes import ProbeMonitor, generalization_matrix, labelled_rows, sweep_layers
    from probes.metrics import auroc

    t0 = time.perf_counter()
    model = steerlens.load_model()
    model("warm up")
    load_s = time.perf_counter() - t0

    if args.general_direction:
        table = _general_direction(model)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.with_name("probes_general_direction.json").write_text(json.dumps(table, indent=1))
        return

    if args.transfer_only:
        table = _recipes(model, args.blas_threads)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.with_name("probes_transfer.json").write_text(json.dumps(table, indent=1))
        print(f"figures written to {args.json.with_name('probes_transfer.json')}")
        return

    rows = labelled_rows(args.dataset)
    t0 = time.perf_counter()
    acts = steerlens.capture(model, [r["prompt"] for r in rows], "resid_post", rows=rows, batch_size=32, progress=False)
    capture_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = sweep_layers(acts, seed=0, dataset=args.dataset, threads=args.blas_threads)
    sweep_s = time.perf_counter() - t0
    per_method = {}
    for m in result.methods:
        recs = [r for r in result.records if r["method"] == m]
        fit = [r["fit_s"] for r in recs]
        ctl = [r.get("control_s", 0.0) for r in recs]
        per_method[m] = {"fit_s_per_layer": statistics.mean(fit), "controls_s_per_layer": statistics.mean(ctl),
                         "total_s": sum(fit) + sum(ctl)}

    # -- generalisation ----------------------------------------------------------------------------
    logistic = result.best_for("logistic")
    gen = generalization_matrix(acts, by="family", layer=logistic["layer"], method="logistic", seed=0)
    transfer = {}
    if args.dataset == "truthfulness":
        probe = result.probe_at(method="logistic")
        for name in ("negations", "arithmetic"):
            other = labelled_rows(name)
            xa = steerlens.capture(model, [r["prompt"] for r in other], logistic["hook"], rows=other, batch_size=32, progress=False)
            transfer[name] = auroc(xa.labels, probe.decision_function(xa[logistic["hook"]]))

    recipes = _recipes(model, args.blas_threads) if args.dataset == "truthfulness" else None

    # -- monitor cost ------------------------------------------------------------------------------
    monitored = {m: result.probe_at(method=m) for m in result.methods}  # each at its own best layer
    prompts = ["The capital of France is", "In 1969, the first person to walk on the moon", "My favourite recipe for bread"]

    def run(with_monitor: bool, prompt: str) -> float:
        t = time.perf_counter()
        if with_monitor:
            with ProbeMonitor(model, monitored) as mon:
                out = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, verbose=False, stop_at_eos=False,
                                     return_type="tokens")
            assert all(v.shape[1] == new_tokens for v in mon.scores.values())
        else:
            out = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, verbose=False, stop_at_eos=False,
                                 return_type="tokens")
        elapsed = time.perf_counter() - t
        return (out.shape[1] - len(model.tokenizer(prompt)["input_ids"])) / elapsed

    run(False, prompts[0]), run(True, prompts[0])  # warm-up
    plain, mon = [], []
    for i in range(repeats):  # paired runs on the same prompt, order alternating
        p = prompts[i % len(prompts)]
        for flag in ((False, True) if i % 2 == 0 else (True, False)):
            (mon if flag else plain).append(run(flag, p))
    ratios = [m / p for m, p in zip(mon, plain)]
    hook_us = _hook_cost_us(model, monitored)
    figures = {
        "device": str(next(model.parameters()).device), "torch_threads": torch.get_num_threads(),
        "blas_threads": args.blas_threads, "load_s": load_s,
        "capture": {"n": len(rows), "layers": 18, "seconds": capture_s},
        "sweep": {"layers": len(result.layers), "methods": list(result.methods), "seconds": sweep_s,
                  "seconds_per_layer": sweep_s / len(result.layers), "per_method": per_method,
                  "best": {k: result.best[k] for k in ("layer", "method")}, "best_test_auroc": result.best["test"]["auroc"],
                  "logistic": {"layer": logistic["layer"], "test_auroc": logistic["test"]["auroc"],
                               "test_auroc_ci": logistic["test"].get("auroc_ci")}},
        "generalization": {"layer": logistic["layer"], "domains": list(gen.domains), "auroc": gen.auroc.tolist(),
                           "transfer_auroc": transfer},
        "recipes": recipes,
        "monitor": {"probes": len(monitored), "new_tokens": new_tokens, "prompts": len(prompts), "repeats": repeats,
                    "plain_tok_s_median": statistics.median(plain), "monitored_tok_s_median": statistics.median(mon),
                    "ratio_median": statistics.median(ratios), "ratio_iqr": _iqr(ratios),
                    "ratio_of_medians": statistics.median(mon) / statistics.median(plain),
                    "hook_us_per_token": hook_us, "ratios": ratios},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=1))
    print(f"model load {load_s:.1f} s; capture {len(rows)} prompts x 18 layers {capture_s:.1f} s")
    print(f"sweep {len(result.layers)} layers x {len(result.methods)} methods (controls + bootstrap): {sweep_s:.1f} s "
          f"({sweep_s / len(result.layers):.2f} s per layer)")
    print(f"{'method':<10} {'fit s/layer':>12} {'controls s/layer':>17} {'total s':>8}")
    for m, v in per_method.items():
        print(f"{m:<10} {v['fit_s_per_layer']:>12.3f} {v['controls_s_per_layer']:>17.3f} {v['total_s']:>8.2f}")
    print(f"logistic: best layer {logistic['layer']}, test AUROC {logistic['test']['auroc']:.3f}; "
          f"generalisation at that layer (train row -> test column):")
    print(" " * 12 + "".join(f"{d[:11]:>12}" for d in gen.domains))
    for d, row in zip(gen.domains, gen.auroc):
        print(f"{d[:11]:<12}" + "".join(f"{v:>12.3f}" for v in row))
    for name, v in transfer.items():
        print(f"truthfulness probe on {name}: AUROC {v:.3f}")
    mo = figures["monitor"]
    print(f"greedy generation, {len(monitored)} probes, {new_tokens} new tokens, {repeats} paired runs: "
          f"plain {mo['plain_tok_s_median']:.1f} tok/s, monitored {mo['monitored_tok_s_median']:.1f} tok/s, "
          f"ratio (median of paired) {mo['ratio_median']:.3f} (IQR {mo['ratio_iqr'][0]:.3f}-{mo['ratio_iqr'][1]:.3f}), "
          f"ratio of medians {mo['ratio_of_medians']:.3f}")
    step_us = 1e6 / mo["plain_tok_s_median"]
    print(f"monitor hooks alone: {hook_us:.0f} us per token ({100 * hook_us / step_us:.2f}% of a {step_us / 1e3:.0f} ms decode step)")
    print(f"figures written to {args.json}")


def _recipes(model, blas_threads: int) -> dict:
    """The old and the new truth recipe's transfer reports, printed side by side."""
    import steerlens
    from probes import labelled_rows, sweep_layers, transfer_report
    from steerlens.neutral import NEUTRAL_TEXTS

    def grab(rows):
        return steerlens.capture(model, [r["prompt"] for r in rows], "resid_post", rows=rows, batch_size=32, progress=False)

    t0 = time.perf_counter()
    truth = grab(labelled_rows("truth"))
    n_aff = sum(r["dataset"] == "truthfulness" for r in truth.rows)
    affirm = steerlens.Activations({h: truth[h][:n_aff] for h in truth.hooks}, truth.rows[:n_aff],
                                   lengths=truth.lengths[:n_aff], pool=truth.pool, info=truth.info)
    negations = steerlens.Activations({h: truth[h][n_aff:] for h in truth.hooks}, truth.rows[n_aff:],
                                      lengths=truth.lengths[n_aff:], pool=truth.pool, info=truth.info)
    arithmetic = grab(labelled_rows("arithmetic"))
    control = steerlens.capture(model, list(NEUTRAL_TEXTS), "resid_post", batch_size=32, progress=False)
    capture_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    old = sweep_layers(affirm, seed=0, dataset="truthfulness", lofo="family", select="val", threads=blas_threads)
    new = sweep_layers(truth, seed=0, dataset="truth", lofo="family", select="lofo", threads=blas_threads)
    sweep_s = time.perf_counter() - t0
    reports = {
        "old": transfer_report(old, affirm, others={"negations": negations, "arithmetic": arithmetic}, control=control),
        "new": transfer_report(new, truth, others={"arithmetic": arithmetic}, control=control),
    }
    print(f"\ntruth recipes (capture {capture_s:.0f} s, two sweeps with leave-one-family-out {sweep_s:.0f} s):")
    for name, res in (("old", old), ("new", new)):
        p = res.picks
        print(f"{name}: picks by validation {p['val']['method']}@{p['val']['layer']} (val {p['val']['val_auroc']:.3f}, "
              f"LOFO {p['val']['lofo_auroc']:.3f}), by leave-one-family-out {p['lofo']['method']}@{p['lofo']['layer']} "
              f"(val {p['lofo']['val_auroc']:.3f}, LOFO {p['lofo']['lofo_auroc']:.3f}); chosen: {res.select}")
    for name, res in (("old", old), ("new", new)):
        by = res.best["lofo"]["by_family"]
        print(f"{name}: leave-one-family-out AUROC of the chosen (method, layer): "
              + ", ".join(f"{f} {v:.3f}" for f, v in sorted(by.items())))
    o, n = reports["old"], reports["new"]
    keys = [(r["dataset"], r["family"]) for r in o.rows]
    newrows = {(r["dataset"], r["family"]): r for r in n.rows}
    print(f"| dataset | family | n (old/new) | AUROC old: {o.method}@{o.layer}, truthfulness | "
          f"AUROC new: {n.method}@{n.layer}, truth + negations | false flagged at 1% neutral FPR old / new | "
          "true flagged old / new |")
    print("|---|---|---|---|---|---|---|")

    def cell(r):
        return "" if r is None else f"{r['auroc']:.3f}" + (" **backwards**" if r["backwards"] else "")

    for key in keys:
        a, b = next(r for r in o.rows if (r["dataset"], r["family"]) == key), newrows.get(key)
        print(f"| {key[0]} | {key[1]} | {a['n']}/{b['n'] if b else '-'} | {cell(a)} | {cell(b)} | "
              f"{a['neg_at_fpr']:.2f} / {b['neg_at_fpr'] if b else float('nan'):.2f} | "
              f"{a['pos_at_fpr']:.2f} / {b['pos_at_fpr'] if b else float('nan'):.2f} |")
    print(f"(negations: old = every row, never trained on; new = its test split. {o.n_control} neutral sentences set "
          "the 1% FPR thresholds: with fewer than 100, beyond every neutral score)")
    return {"capture_s": capture_s, "sweep_s": sweep_s,
            "old": {"picks": old.picks, "select": old.select, "lofo": old.best["lofo"], "transfer": o.to_dict()},
            "new": {"picks": new.picks, "select": new.select, "lofo": new.best["lofo"], "transfer": n.to_dict()}}


def _general_direction(model, layers=range(4, 15)) -> dict:
    """Leave-one-family-out AUROC per layer: logistic probe, t_G, TTPD (see the module docstring)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    import steerlens
    from probes import LogisticProbe, labelled_rows
    from probes.metrics import auroc

    aff, neg = labelled_rows("truthfulness"), labelled_rows("negations")
    rows = aff + neg
    acts = steerlens.capture(model, [r["prompt"] for r in rows], "resid_post", layers=list(layers), pool="last",
                             rows=rows, batch_size=32, progress=False)
    y = np.array([r["label"] for r in rows])
    fam = np.array([r["family"] for r in rows])
    tau, p = 2.0 * y - 1, np.r_[-np.ones(len(aff)), np.ones(len(neg))]  # p = +1: negated
    families = list(dict.fromkeys(fam.tolist()))
    out: dict = {}
    lines = ["| layer | logistic: LOFO mean (min) | t_G: LOFO mean (min) | TTPD: LOFO mean (min) |", "|---|---|---|---|"]
    for layer in layers:
        X = acts.numpy(f"blocks.{layer}.hook_resid_post").astype(np.float64)
        for f in families:
            X[fam == f] -= X[fam == f].mean(0)  # each family centred on its own mean
        res: dict = {"logistic": {}, "t_G": {}, "ttpd": {}}
        for f in families:
            tr, te = np.flatnonzero(fam != f), np.flatnonzero(fam == f)
            res["logistic"][f] = auroc(y[te], LogisticProbe(C=0.1).fit(X[tr], y[tr]).decision_function(X[te]))
            T = np.linalg.lstsq(np.stack([tau[tr], tau[tr] * p[tr]], 1), X[tr], rcond=None)[0]
            t_g = T[0] / np.linalg.norm(T[0])
            res["t_G"][f] = auroc(y[te], X[te] @ t_g)
            w = LogisticRegression(C=0.1, max_iter=2000).fit(X[tr], p[tr] > 0).coef_[0]
            P = np.stack([t_g, w / np.linalg.norm(w)], 1)
            clf = LogisticRegression(max_iter=2000).fit(X[tr] @ P, y[tr])
            res["ttpd"][f] = auroc(y[te], clf.decision_function(X[te] @ P))
        out[layer] = {k: {f: round(float(v), 3) for f, v in d.items()} for k, d in res.items()}
        cells = [f"{np.mean(list(d.values())):.3f} ({min(d.values()):.3f})" for d in out[layer].values()]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    print("\n".join(lines))
    return out


def _iqr(values: list[float]) -> list[float]:
    q = statistics.quantiles(values, n=4)
    return [q[0], q[2]]


def _hook_cost_us(model, monitored, n: int = 2000) -> float:
    """Time the monitor's own work per decoded token (the hook functions it registers, called on
    [1, 1, d] inputs as at a KV-cached decode step), free of the generation-to-generation noise
    of the end-to-end ratio."""
    from types import SimpleNamespace

    from probes import ProbeMonitor
    from steerlens.steps import _ACTIVE  # the block the monitor opened: its registered functions

    with ProbeMonitor(model, monitored):
        fns = [fn for fs in _ACTIVE.get()[-1].hooks.values() for fn in fs]
        x = torch.randn(1, 1, model.cfg.d_model)
        step = SimpleNamespace(past=1)  # a decode step: the KV cache holds the earlier tokens
        for fn in fns:  # warm-up
            fn(x, step)
        t = time.perf_counter()
        for _ in range(n):
            for fn in fns:
                fn(x, step)
        return (time.perf_counter() - t) / n * 1e6


if __name__ == "__main__":
    main()
