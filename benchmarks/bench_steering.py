"""Steering overhead and batching: greedy tokens/s steered vs unsteered, one batch of 8 prompts with
8 different vectors vs 8 sequential steered runs, and the time to compute a vector; with
``--recipes``, the sentiment recipe table instead (effect judged from outside, per cost).

    python benchmarks/bench_steering.py [--model gemma-3-270m] [--layer 6] [--new-tokens 32] [--rounds 3] [--overhead-rounds 10]
    python benchmarks/bench_steering.py --recipes [--new-tokens 16] [--ppl-budget 1.3] [--steps 2] [--target-shift 0.3] [--only NAMES] [--control-seeds 8] [--json benchmarks/out/steering_recipes.json]
    python benchmarks/bench_steering.py --table benchmarks/out/steering_recipes.json

Recipe table: each recipe's vector (pooling, layer(s), contrastive data, method) gets the largest
coefficient whose perplexity ratio on neutral text (``steerlens.neutral``) stays <= ``--ppl-budget``
(``steer.calibrate``, cost mode); the effect is the shift of VADER's positive and negative shares
(``steer.judges.VaderJudge``) over unsteered on greedy continuations of ``steer.judges.HELD_OUT_OPENINGS``
(prompts used neither to build nor to calibrate any vector), with the degenerate-repetition rate;
the best recipe is then repeated with random directions of its norm per layer, ``--control-seeds``
of each kind: isotropic, or shaped like the sentence activations (``SteeringVector.random_like(acts=...)``),
at the recipe's coefficient (same norm) or at the coefficient giving the recipe's KL (same cost).

Runs are interleaved in ABBA order (unsteered, steered, steered, unsteered, ...) and the median of ``--rounds`` is
reported (``--overhead-rounds`` for the steered/unsteered ratio: single runs scatter ±5%, so a
few rounds cannot resolve a 3% target), so background load hits both sides alike. Target: steered/unsteered >= 0.97.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

import steer
import steerlens
from steer.evaluate import NEUTRAL_OPENINGS


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the per-row batch vs sequential timing")
    ap.add_argument("--overhead-rounds", type=int, default=10, help="rounds of the steered vs unsteered timing")
    ap.add_argument("--recipes", action="store_true", help="print the sentiment recipe table instead")
    ap.add_argument("--ppl-budget", type=float, default=1.3, help="--recipes: perplexity-ratio budget per recipe")
    ap.add_argument("--steps", type=int, default=2, help="--recipes: bisection steps of each recipe's calibration")
    ap.add_argument("--target-shift", type=float, default=None,
                    help="--recipes: calibrate each recipe to this shift of the judge's positive share on the "
                         "calibration openings (steer.calibrate's behaviour mode, within --ppl-budget and 5%% "
                         "degenerate) instead of to the largest coefficient within --ppl-budget")
    ap.add_argument("--only", default=None, help="--recipes: comma-separated recipe names to run")
    ap.add_argument("--control-seeds", type=int, default=8,
                    help="--recipes: random directions per kind (isotropic, activation-shaped) for the best recipe")
    ap.add_argument("--json", default=None, help="--recipes: also write the table as JSON here (after every recipe)")
    ap.add_argument("--table", default=None, help="print the recipe table of a JSON written by --recipes --json "
                                                  "(also of a run stopped part-way)")
    args = ap.parse_args()
    if args.table:
        with open(args.table) as f:
            return print_table(json.load(f))
    if args.recipes:
        return recipes(args)

    torch.manual_seed(0)
    model = steerlens.load_model(args.model, dtype=args.dtype)
    out: dict = {"model": args.model, "layer": args.layer, "new_tokens": args.new_tokens,
                 "rounds": args.rounds, "overhead_rounds": args.overhead_rounds,
                 "threads": torch.get_num_threads()}

    # vector computation: capture the 150 sentiment pairs (stops after the layer) + mean_diff / pca
    t = time.perf_counter()
    vec = steer.compute(model, "sentiment", layers=[args.layer], method="mean_diff")
    out["compute_mean_diff_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    steer.compute(model, "sentiment", layers=[args.layer], method="pca")
    out["compute_pca_s"] = round(time.perf_counter() - t, 2)
    print(json.dumps({k: v for k, v in out.items() if k.startswith("compute")}), file=sys.stderr, flush=True)
    kw = dict(max_new_tokens=args.new_tokens, stop_at_eos=False, return_tokens=True)
    coeff = 1.0

    # 1. overhead: the same greedy generation with and without steering (1 prompt, and 8 prompts)
    for label, prompts in (("single", list(NEUTRAL_OPENINGS[:1])), ("batch8", list(NEUTRAL_OPENINGS[:8]))):
        steer.generate(model, prompts, vec, coeff=coeff, max_new_tokens=2)  # warm-up
        plain, steered = [], []
        for r in range(args.overhead_rounds):  # ABBA order: neither side always runs second
            first, second = (plain, steered) if r % 2 == 0 else (steered, plain)
            for times in (first, second):
                v = None if times is plain else vec
                times.append(timed(lambda: steer.generate(model, prompts, v, coeff=coeff if v else None, **kw)))
        n_tok = len(prompts) * args.new_tokens
        p, s = statistics.median(plain), statistics.median(steered)
        out[f"{label}_unsteered_tok_s"] = round(n_tok / p, 2)
        out[f"{label}_steered_tok_s"] = round(n_tok / s, 2)
        out[f"{label}_ratio"] = round(p / s, 3)
        print(json.dumps({k: v for k, v in out.items() if k.startswith(label)}), file=sys.stderr, flush=True)

    # 2. per-row vectors: one batch of 8 prompts x 8 vectors vs 8 sequential single-prompt runs
    prompts = list(NEUTRAL_OPENINGS[:8])
    vectors = [vec.random_like(seed=i) for i in range(7)] + [vec]
    coeffs = [0.5 + 0.25 * i for i in range(8)]
    batched, sequential = [], []
    for _ in range(args.rounds):
        batched.append(timed(lambda: steer.generate(model, prompts, vectors, coeff=coeffs, **kw)))
        sequential.append(timed(lambda: [steer.generate(model, [p], v, coeff=c, **kw)
                                         for p, v, c in zip(prompts, vectors, coeffs)]))
    b, q = statistics.median(batched), statistics.median(sequential)
    out["per_row_batch8_s"] = round(b, 2)
    out["sequential8_s"] = round(q, 2)
    out["per_row_speedup"] = round(q / b, 2)
    # the ceiling on this machine: what batching 8 prompts buys unsteered (same run), and why: the
    # cost of one decode step's unembedding matmul for 1 and 8 rows
    out["plain_batch8_speedup"] = round(out["batch8_unsteered_tok_s"] / out["single_unsteered_tok_s"], 2)
    W = model.original_model.get_output_embeddings().weight.detach()
    for rows in (1, 8):
        x = torch.randn(rows, W.shape[1], dtype=W.dtype, device=W.device)
        torch.nn.functional.linear(x, W)
        out[f"unembed_matmul_{rows}_rows_s"] = round(statistics.median(
            timed(lambda: torch.nn.functional.linear(x, W)) for _ in range(10)), 3)
    print(json.dumps(out, indent=1))


#: CAA-style paired completions (Rimsky et al. 2024, arXiv:2312.06681: the same prompt, a contrasting
#: answer, the activation at the answer): neutral stems x (positive, negative) one-word completions.
CAA_STEMS = ("Overall, the day was", "In one word, the experience was", "Honestly, I feel", "The whole thing was",
             "My verdict: it was", "Looking back, the week was", "Everyone agreed that it was", "To be frank, it was")
CAA_WORDS = (("wonderful", "terrible"), ("happy", "sad"), ("great", "awful"), ("lovely", "horrible"),
             ("excellent", "dreadful"), ("delightful", "miserable"))


def caa_pairs() -> list[tuple[str, str]]:
    return [(f"{s} {p}", f"{s} {n}") for s in CAA_STEMS for p, n in CAA_WORDS]


def recipes(args) -> None:
    import probes
    from steer.evaluate import steering_cost
    from steer.judges import HELD_OUT_OPENINGS, VaderJudge, degenerate_rate, judge_texts
    from steerlens import data

    torch.manual_seed(0)
    model = steerlens.load_model(args.model, dtype=args.dtype)
    judge, prompts, n_new = VaderJudge(), list(HELD_OUT_OPENINGS), args.new_tokens
    pairs = data.load("sentiment")
    texts, labels = [p.positive for p in pairs] + [p.negative for p in pairs], [1] * len(pairs) + [0] * len(pairs)
    caa = caa_pairs()
    caa_texts, caa_labels = [a for a, _ in caa] + [b for _, b in caa], [1] * len(caa) + [0] * len(caa)
    cap = lambda t, lab, pool, layers: steerlens.capture(model, t, "resid_post", layers=layers, pool=pool,  # noqa: E731
                                                         labels=lab, batch_size=32, progress=False)
    t0 = time.perf_counter()
    every = list(range(model.cfg.n_layers))
    acts = {"mean": cap(texts, labels, "mean", every), "last": cap(texts, labels, "last", [6])}
    caa_acts = cap(caa_texts, caa_labels, "last", [6])
    probe6 = probes.LogisticProbe().fit(acts["mean"].at(6), acts["mean"].labels)
    md = lambda layers: steer.mean_diff(acts["mean"], layers=layers)  # noqa: E731
    table = {  # name -> (what varies, vector)
        "mean_diff mean all": ("layers / default", md(every)),
        "mean_diff mean L6": ("layer", md([6])),
        "mean_diff CAA-pairs L6": ("contrastive data", steer.mean_diff(caa_acts, layers=[6])),
        "mean_diff last L6": ("pooling", steer.mean_diff(acts["last"], layers=[6])),
        "mean_diff mean L4": ("layer", md([4])),
        "mean_diff mean L4+L6": ("one vs several layers", md([4, 6])),
        "mean_diff mean L1-17": ("one vs several layers", md(every[1:])),
        "mean_diff mean L2-8": ("one vs several layers", md(list(range(2, 9)))),
        "mean_diff mean L2-12": ("one vs several layers", md(list(range(2, 13)))),
        "probe mean L6": ("method", steer.from_probe(probe6, 6, positive=acts["mean"])),
        "pca mean L6": ("method", steer.pca(acts["mean"], layers=[6])),
        "mean_diff mean L8": ("layer", md([8])),
        "mean_diff mean L2": ("layer", md([2])),
        "mean_diff mean L3": ("layer", md([3])),
        "mean_diff mean L5": ("layer", md([5])),
        "mean_diff mean L7": ("layer", md([7])),
    }
    if args.only:
        keep = {x.strip() for x in args.only.split(",")}
        if keep - set(table):
            raise SystemExit(f"--only: unknown recipes {sorted(keep - set(table))}; known: {sorted(table)}")
        table = {k: v for k, v in table.items() if k in keep}
    print(json.dumps({"capture_s": round(time.perf_counter() - t0, 1)}), file=sys.stderr, flush=True)
    base_texts = steer.generate(model, prompts, None, max_new_tokens=n_new)
    base = judge_texts(judge, base_texts)
    out = {"model": args.model, "new_tokens": n_new, "ppl_budget": args.ppl_budget, "steps": args.steps,
           "target_shift": args.target_shift,
           "n_prompts": len(prompts),
           "threads": torch.get_num_threads(), "unsteered": {
               "positive_share": base.positive_share, "negative_share": base.negative_share,
               "degenerate": base.degenerate, "samples": base_texts}, "recipes": {}}

    def judged(vec, coeff):
        gen = steer.generate(model, prompts, vec, coeff=coeff, max_new_tokens=n_new)
        j = judge_texts(judge, [g if g.strip() else p + g for p, g in zip(prompts, gen)])
        return {"positive_share": j.positive_share, "negative_share": j.negative_share,
                "d_positive": j.positive_share - base.positive_share,
                "d_negative": j.negative_share - base.negative_share,
                "degenerate": degenerate_rate(gen), "samples": gen}

    def save():
        if args.json:
            from steerlens.io import write_json

            write_json(args.json, out)

    for name, (varies, vec) in table.items():
        t = time.perf_counter()
        if args.target_shift is None:
            cal = steer.calibrate(model, vec, kl_budget=None, ppl_budget=args.ppl_budget, start=1.0, steps=args.steps)
        else:
            cal = steer.calibrate(model, vec, target_shift=args.target_shift, judge=judge, prompts=NEUTRAL_OPENINGS,
                                  max_new_tokens=n_new, ppl_budget=args.ppl_budget, max_degenerate=0.05, start=1.0,
                                  steps=args.steps)
        info = cal.info["calibration"]
        row = {"varies": varies, "coeff": cal.coeff, "kl": info["kl"], "ppl_ratio": info["ppl_ratio"],
               "norm": vec.norms(), **judged(vec, cal.coeff)}
        if args.target_shift is not None:
            row["calibration"] = {"reached": info["reached"], "shift": info["shift"], "n_prompts": len(info["prompts"])}
        row["seconds"] = round(time.perf_counter() - t, 1)
        out["recipes"][name] = row
        print(json.dumps({name: {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                                 if k not in ("samples", "norm")}}), file=sys.stderr, flush=True)
        save()
    best = max(out["recipes"], key=lambda k: out["recipes"][k]["d_positive"] - out["recipes"][k]["d_negative"])
    vec, coeff = table[best][1], out["recipes"][best]["coeff"]
    out["best"] = best
    # the controls: random directions with the best recipe's norm per layer, isotropic or shaped like
    # the sentence activations (vector.random_like(seed, acts=...)), at its coefficient (same norm) or
    # at the coefficient that gives the recipe's KL on the neutral texts (same cost)
    kl = out["recipes"][best]["kl"]
    out["random_control"] = {"recipe": best, "coeff": coeff, "kl": kl, "kinds": {}}
    for kind, shape, same_kl in (("isotropic", None, False), ("activation-shaped", acts["mean"], False),
                                 ("isotropic, same KL", None, True), ("activation-shaped, same KL", acts["mean"], True)):
        runs = []
        for seed in range(args.control_seeds):
            rand = vec.random_like(seed=seed, acts=shape)
            c = steer.calibrate(model, rand, kl_budget=kl, start=coeff, steps=4).coeff if same_kl else coeff
            cost = steering_cost(model, rand, c)
            runs.append({"seed": seed, "coeff": c, "kl": cost.kl, "ppl_ratio": cost.ppl_ratio, **judged(rand, c)})
        out["random_control"]["kinds"][kind] = runs
        print(json.dumps({kind: [round(r["d_positive"], 3) for r in runs]}), file=sys.stderr, flush=True)
        save()
    print_table(out)


def print_table(out: dict) -> None:
    from steer.judges import degenerate_rate

    controls = [r for runs in out.get("random_control", {}).get("kinds", {}).values() for r in runs]
    for r in [out["unsteered"], *out["recipes"].values(), *controls]:
        r["degenerate"] = degenerate_rate(r["samples"])  # the current rule, from the saved continuations
    u = out["unsteered"]
    print(f"unsteered: positive share {u['positive_share']:.3f}, negative {u['negative_share']:.3f}, "
          f"degenerate {u['degenerate']:.3f} ({out['n_prompts']} held-out openings, {out['new_tokens']} greedy tokens; "
          + (f"each recipe at the largest coefficient with perplexity ratio <= {out['ppl_budget']})"
             if out.get("target_shift") is None else
             f"each recipe at the smallest coefficient raising the positive share by {out['target_shift']} on the "
             f"calibration openings, within perplexity ratio {out['ppl_budget']} and 5% degenerate)"))
    print(f"{'recipe':<24} {'varies':<22} {'coeff':>6} {'KL':>6} {'ppl×':>6} {'Δpos':>6} {'Δneg':>6} {'degen':>6}")
    for name, r in out["recipes"].items():
        print(f"{name:<24} {r['varies']:<22} {r['coeff']:>6.2f} {r['kl']:>6.3f} {r['ppl_ratio']:>6.3f} "
              f"{r['d_positive']:>+6.3f} {r['d_negative']:>+6.3f} {r['degenerate']:>6.3f}"
              + (f"  calibration: reached {c['reached']}, shift {c['shift']:+.3f} on {c['n_prompts']} openings"
                 if (c := r.get("calibration")) else ""))
    rc = out.get("random_control")
    if not rc:
        print("(run stopped before the random controls)")
        return
    if not any(rc.get("kinds", {}).values()):
        print("(no random controls: --control-seeds 0)")
        return
    print(f"best: {rc['recipe']}; random directions of its norm per layer, at its coeff {rc['coeff']:.3g} or at "
          f"its KL {rc.get('kl', float('nan')):.3f} (mean over seeds, [min, max]):")
    for kind, runs in rc.get("kinds", {}).items():
        if not runs:
            continue
        m = lambda k: statistics.mean(r[k] for r in runs)  # noqa: E731
        lo, hi = min(r["d_positive"] for r in runs), max(r["d_positive"] for r in runs)
        print(f"  {kind:<26} {len(runs)} seeds: coeff {m('coeff'):.3g}, Δpos {m('d_positive'):+.3f} [{lo:+.3f}, {hi:+.3f}], "
              f"Δneg {m('d_negative'):+.3f}, degenerate {m('degenerate'):.3f}, KL {m('kl'):.3f}, "
              f"ppl× {m('ppl_ratio'):.3f}")


if __name__ == "__main__":
    main()
