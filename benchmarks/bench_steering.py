"""Steering overhead and batching: greedy tokens/s steered vs unsteered, one batch of 8 prompts with
8 different vectors vs 8 sequential steered runs, and the time to compute a vector.

    python benchmarks/bench_steering.py [--model gemma-3-270m] [--layer 6] [--new-tokens 32] [--rounds 3] [--overhead-rounds 10]

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
    args = ap.parse_args()

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


if __name__ == "__main__":
    main()
