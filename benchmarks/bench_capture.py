"""Capture throughput vs a plain forward pass of the same batches, and peak RSS with/without streaming.

    python benchmarks/bench_capture.py [--n 256] [--batch-size 16] [--dtype float32] [--rounds 2]

Prints tokens/s of a full forward pass (logits), of capture at mid depth (stops after block 8) and
at full depth (last block), their time ratios against the forward pass, then the peak RSS of
capturing a 10x larger set (all tokens, 3 hooks) in memory vs streamed to disk (``out=``), each
in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import steerlens
from steerlens.tokens import tokenize


def prompts(n: int) -> list[str]:
    texts = [r.text for r in steerlens.data.load("truthfulness")]
    return [texts[i % len(texts)] for i in range(n)]


def forward_time(model, texts, batch_size) -> float:
    batches = [tokenize(model, texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    t = time.perf_counter()
    with torch.inference_mode():
        for ids, mask, _ in batches:
            model(ids, attention_mask=mask, return_type="logits")
    return time.perf_counter() - t


def capture_time(model, texts, batch_size, layers) -> float:
    t = time.perf_counter()
    steerlens.capture(model, texts, "resid_post", layers=layers, batch_size=batch_size, progress=False)
    return time.perf_counter() - t


def peak_rss_child(n: int, batch_size: int, stream: bool) -> None:
    import threading

    import psutil

    model = steerlens.load_model()
    proc, peak, done = psutil.Process(), [0], threading.Event()

    def sample() -> None:  # the load's own transient peak must not hide capture's
        while not done.wait(0.01):
            peak[0] = max(peak[0], proc.memory_info().rss)

    base = proc.memory_info().rss
    threading.Thread(target=sample, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/acts" if stream else None
        acts = steerlens.capture(model, prompts(n), "resid_post", layers=[4, 8, 12], pool="all",
                                 batch_size=batch_size, out=out, progress=False)
        rows = sum(acts.lengths.tolist())
        done.set()
    print(json.dumps({"peak_mb": peak[0] / 2**20, "model_mb": base / 2**20, "token_rows": rows}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--rss-only", action="store_true")
    ap.add_argument("--rss-child", choices=["memory", "stream"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        return peak_rss_child(args.n, args.batch_size, args.rss_child == "stream")

    if not args.rss_only:
        throughput(args)
    if not args.skip_rss:
        peak_rss(args)


def throughput(args) -> None:
    model = steerlens.load_model(dtype=args.dtype)
    texts = prompts(args.n)
    n_tokens = int(sum(tokenize(model, texts)[2]))
    runs = {"forward (logits)": [], "capture mid (layers 4,6,8)": [], "capture full (layers 6,12,17)": []}
    capture_time(model, texts[: args.batch_size], args.batch_size, [17])  # warm-up
    for _ in range(args.rounds):  # interleaved, so drift hits every variant alike
        runs["forward (logits)"].append(forward_time(model, texts, args.batch_size))
        runs["capture mid (layers 4,6,8)"].append(capture_time(model, texts, args.batch_size, [4, 6, 8]))
        runs["capture full (layers 6,12,17)"].append(capture_time(model, texts, args.batch_size, [6, 12, 17]))
    base = statistics.median(runs["forward (logits)"])
    print(f"{args.n} prompts, {n_tokens} tokens, batch {args.batch_size}, {args.dtype}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds}")
    for name, times in runs.items():
        t = statistics.median(times)
        print(f"  {name:<30} {n_tokens / t:8.0f} tok/s   time ratio vs forward {t / base:.3f}")



def peak_rss(args) -> None:
    n_big = 10 * args.n
    print(f"peak RSS capturing {n_big} prompts, all tokens, 3 hooks (fresh process each):")
    for mode in ("memory", "stream"):
        res = subprocess.run([sys.executable, __file__, "--rss-child", mode, "--n", str(n_big),
                              "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"  {mode:<7} peak RSS {r['peak_mb']:6.0f} MB = model {r['model_mb']:6.0f} MB "
              f"+ {r['peak_mb'] - r['model_mb']:5.0f} MB for {r['token_rows']} token rows")


if __name__ == "__main__":
    main()
