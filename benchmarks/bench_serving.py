"""Serving: tokens/s and request latency of the OpenAI-compatible server (``steer.serve``) on the
embedded model, for continuous batching, static batching and sequential serving, unsteered and
with every request steered by a different vector.

    python benchmarks/bench_serving.py [--quick] [--max-tokens 16] [--max-batch 16] [--window 0.05] [--threads 0]
                                       [--time-limit 1200] [--cell-limit 300] [--json benchmarks/out/serving.json]

The server runs in this process (``steer.serve.Server``: uvicorn on 127.0.0.1, a free port; the
engine thread owns the model); the load generator is an asyncio loop of ``clients`` closed-loop
clients (``openai.AsyncOpenAI`` over loopback, no retries, proxies ignored): each client sends a
completion, waits for the whole answer, sends the next, until the cell's request count is reached
or its time limit passes (requests still in flight then are cancelled and the cell is marked
``capped``). Every request: a prompt from ``steer.evaluate.NEUTRAL_OPENINGS``, ``temperature=0``,
``max_tokens`` fixed. Throughput is completion tokens / wall time of the cell (first send to last
answer); latency is per request, send to last byte.

Modes: ``continuous`` (rows join the running batch at every decode step, ``max_batch`` rows),
``static`` (the engine waits up to ``--window`` s to fill a batch, then runs it to the end) and
``sequential`` (``max_batch=1``): one server each, all three up for the whole run. Steered: every
request names a different registered vector (a random direction with the sentiment vector's
norm at layer 6, ``SteeringVector.random_like(seed=i)``) with its own coefficient (0.5 to 2.25),
so no two rows of a batch share a vector.

Schedule: at the reference concurrency (``--steered-clients``, 16) the four cells the targets
need (continuous unsteered, continuous steered, sequential, static) run in ``--rounds`` rounds
(2), every other one in reverse order, so every compared pair is ABBA and load that drifts during
the run hits both sides alike (this machine is shared): the table gives each ratio pooled over
the rounds and the median of the per-round ratios, with each round's. Then the other
concurrencies, the three modes of one level adjacent in time (with ``--steered-everywhere``
also steered, for the modes that steer per request: continuous and vllm). Every ratio is against a baseline
measured in the same run; a run cut short by ``--time-limit`` loses the last cells first.

Sizing (full run: 14 minutes on 2 CPU cores with one of them busy; at most 20 minutes: past
``--time-limit`` the remaining cells are skipped, e.g. the other concurrencies with
``--rounds 4``): 16 tokens per request; at 16 clients, per round, 32 requests per cell (two
closed-loop waves) for the batching modes and 16 for sequential (one per client, a burst: its
latencies are a queueing ramp); 4 / 8 / 32 requests at 1 / 4 / 32 clients. At 32 clients each
client sends one request (with ``max_batch=16`` the batching modes run two waves, so latencies
include the wait for a row); sequential serving at a few tokens/s makes that the most expensive
cell, so it gets no second round.

``--modes continuous vllm`` (in the vLLM environment of tools/install-vllm.sh) adds a server on
``steer.serve.vllm_engine.VLLMEngine`` (the same app and registry; vLLM's scheduler, paged KV cache
and prefix caching off; on the CPU a ``--vllm-kv-cache-gib`` KV cache), unsteered and steered, in
the same ABBA rounds as the in-process continuous engine: vLLM / in-process tokens/s (target ≥ 2×
at 16 clients) and vLLM steered / unsteered (target ≥ 0.90). ``--quick``: 1 and 4 clients, 8 tokens, 2 / 4 requests (a
smoke run of the same code, minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import torch

MODEL_ID = "gemma-3-270m"
FULL_REQUESTS = {1: 4, 4: 8, 32: 32}  # per cell; the reference level: --ref-requests / --ref-seq-requests
QUICK_REQUESTS = {1: 2, 4: 4}


def percentile(xs: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), ``None`` for no samples."""
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


async def drive(url: str, *, clients: int, n_requests: int, max_tokens: int, limit: float,
                steering=None) -> dict:
    """``clients`` closed-loop clients send ``n_requests`` completions in all; at most ``limit`` s."""
    import httpx
    import openai

    from steer.evaluate import NEUTRAL_OPENINGS

    http = httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(limit + 30),
                             limits=httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4))
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, http_client=http)
    counter = itertools.count()
    start = time.perf_counter()
    deadline = start + limit
    done: list[dict] = []
    errors: list[str] = []

    async def worker() -> None:
        while time.perf_counter() < deadline:
            i = next(counter)
            if i >= n_requests:
                return
            extra = {"timeout": max(1.0, deadline - time.perf_counter())}  # the server frees the row too
            if steering is not None:
                extra["steering"] = [steering(i)]
            t = time.perf_counter()
            try:
                r = await client.completions.create(model=MODEL_ID, prompt=NEUTRAL_OPENINGS[i % len(NEUTRAL_OPENINGS)],
                                                    max_tokens=max_tokens, temperature=0, extra_body=extra)
            except (openai.APIError, httpx.HTTPError) as e:  # counted, not retried: a failing server shows
                errors.append(f"{type(e).__name__}: {e}"[:200])
                continue
            done.append({"latency": time.perf_counter() - t, "end": time.perf_counter() - start,
                         "tokens": r.usage.completion_tokens, "finish": r.choices[0].finish_reason})

    tasks = [asyncio.ensure_future(worker()) for _ in range(clients)]
    _, pending = await asyncio.wait(tasks, timeout=limit + 5)
    for t in pending:  # past the hard limit: cancel (the server sees the disconnect and frees the row)
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await client.close()
    capped = bool(pending) or len(done) < n_requests  # cut by the time limit (or failed: see errors)
    wall = max((d["end"] for d in done), default=time.perf_counter() - start)
    lat = [d["latency"] for d in done]
    tokens = sum(d["tokens"] for d in done)
    return {"clients": clients, "requests": n_requests, "completed": len(done), "errors": errors[:5],
            "n_errors": len(errors), "capped": capped, "wall_s": round(wall, 3), "tokens": tokens,
            "tok_s": round(tokens / wall, 3) if wall > 0 else None,
            "p50_s": _r(percentile(lat, 50)), "p95_s": _r(percentile(lat, 95)),
            "finish_stop": sum(d["finish"] == "stop" for d in done), "latencies_s": [round(x, 3) for x in lat]}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def batch_stats(app, before: dict) -> dict:
    """Mean rows per decode forward and the engine's counters over one cell."""
    reg = app.state.metrics.registry
    s = reg.get_sample_value("steerlens_batch_size_sum", {"kind": "decode"}) or 0.0
    n = reg.get_sample_value("steerlens_batch_size_count", {"kind": "decode"}) or 0.0
    eng = dict(app.state.engine.stats)
    out = {k: eng[k] - before["engine"].get(k, 0) for k in ("admitted", "joined", "forwards")}
    ds, dn = s - before["sum"], n - before["count"]
    out["mean_decode_rows"] = round(ds / dn, 2) if dn else None
    out["decode_forwards"] = int(dn)
    return out


def snapshot(app) -> dict:
    reg = app.state.metrics.registry
    return {"sum": reg.get_sample_value("steerlens_batch_size_sum", {"kind": "decode"}) or 0.0,
            "count": reg.get_sample_value("steerlens_batch_size_count", {"kind": "decode"}) or 0.0,
            "engine": dict(app.state.engine.stats)}


def pooled(cells: list[dict]) -> dict:
    """Several runs of one cell as one: tokens and wall times summed, latencies pooled."""
    lat = [x for c in cells for x in c["latencies_s"]]
    tokens, wall = sum(c["tokens"] for c in cells), sum(c["wall_s"] for c in cells)
    return {"clients": cells[0]["clients"], "requests": sum(c["requests"] for c in cells),
            "completed": sum(c["completed"] for c in cells), "n_errors": sum(c["n_errors"] for c in cells),
            "capped": any(c["capped"] for c in cells), "tokens": tokens, "wall_s": round(wall, 3),
            "tok_s": round(tokens / wall, 3) if wall else None,
            "p50_s": _r(percentile(lat, 50)), "p95_s": _r(percentile(lat, 95)),
            "mean_decode_rows": _mean([c.get("mean_decode_rows") for c in cells]),
            "runs_tok_s": [c["tok_s"] for c in cells]}


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(statistics.mean(xs), 2) if xs else None


def ratio(a, b) -> float | None:
    return round(a / b, 3) if a and b else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 and 4 clients, 8 tokens, few requests (a smoke run)")
    ap.add_argument("--max-tokens", type=int, default=None, help="tokens per request (default 16; --quick: 8)")
    ap.add_argument("--ref-requests", type=int, default=None,
                    help="requests per cell at --steered-clients, batching modes (default 32; --quick: 4)")
    ap.add_argument("--ref-seq-requests", type=int, default=None,
                    help="requests per cell at --steered-clients, sequential (default 16; --quick: 4)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds at --steered-clients, alternately forward and reversed (default 2)")
    ap.add_argument("--max-batch", type=int, default=16, help="rows of the batching modes")
    ap.add_argument("--window", type=float, default=0.05, help="static batching's wait window, seconds")
    ap.add_argument("--clients", type=int, nargs="+", default=None, help="concurrency levels (default 1 4 16 32)")
    ap.add_argument("--steered-clients", type=int, default=None,
                    help="the reference concurrency: every mode and the steered runs twice, ABBA (default 16; --quick: 4)")
    ap.add_argument("--steered-everywhere", action="store_true",
                    help="steered cells at every concurrency, not only --steered-clients (continuous and vllm)")
    ap.add_argument("--modes", nargs="+", default=["continuous", "sequential", "static"],
                    choices=["continuous", "sequential", "static", "vllm"],
                    help="vllm: steer.serve's VLLMEngine (needs vLLM: tools/install-vllm.sh), compared with continuous")
    ap.add_argument("--vllm-kv-cache-gib", type=float, default=1.0, help="vllm mode: KV cache size on the CPU")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="hard limit of the whole run from start (setup included), s (default 1200; --quick: 600)")
    ap.add_argument("--cell-limit", type=float, default=None, help="hard limit of one cell, s (default 300)")
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", default="benchmarks/out/serving.json")
    args = ap.parse_args()
    started = time.monotonic()
    if args.threads:
        torch.set_num_threads(args.threads)

    quick = args.quick
    clients_levels = args.clients or ([1, 4] if quick else [1, 4, 16, 32])
    steered_at = args.steered_clients or (4 if quick else 16)
    if steered_at not in clients_levels:
        ap.error(f"--steered-clients {steered_at} is not among --clients {clients_levels}")
    max_tokens = args.max_tokens or (8 if quick else 16)
    rounds = args.rounds or 2
    ref_requests = args.ref_requests or (4 if quick else 32)
    ref_seq_requests = args.ref_seq_requests or (4 if quick else 16)
    time_limit = args.time_limit or (600.0 if quick else 1200.0)
    cell_limit = args.cell_limit or (120.0 if quick else 300.0)
    table = QUICK_REQUESTS if quick else FULL_REQUESTS

    def n_requests(mode: str, clients: int) -> int:
        return table.get(clients, 2 * clients)

    import steer
    import steerlens
    from steer.serve import Server, build

    torch.manual_seed(0)
    out: dict = {"date": time.strftime("%Y-%m-%d"), "quick": quick, "model": MODEL_ID, "max_tokens": max_tokens,
                 "max_batch": args.max_batch, "window_s": args.window, "layer": args.layer,
                 "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                 "platform": platform.platform(), "python": platform.python_version(),
                 "loadavg_start": [round(x, 2) for x in os.getloadavg()], "cells": {}}
    t = time.perf_counter()
    model = steerlens.load_model(MODEL_ID)
    out["load_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    sentiment = steer.compute(model, "sentiment", layers=[args.layer])
    out["compute_vector_s"] = round(time.perf_counter() - t, 1)
    out["sentiment_norm"] = round(sentiment.norms()[args.layer], 2)
    n_vectors = max([ref_requests] + [n_requests("continuous", c) for c in clients_levels])
    vectors = {f"r{i}": sentiment.random_like(seed=i) for i in range(n_vectors)}

    def steering(i: int) -> dict:
        return {"vector": f"r{i % n_vectors}", "coeff": 0.5 + 0.25 * (i % 8), "positions": "all"}

    print(json.dumps({k: out[k] for k in ("load_s", "compute_vector_s", "sentiment_norm", "loadavg_start")}),
          file=sys.stderr, flush=True)

    hard_end = started + time_limit - 20  # leaves time to cancel a capped cell and stop the servers
    # the schedule: at the reference concurrency every mode (and steered) in each round, every other
    # round reversed (ABBA for every pair, so drifting background load hits both sides alike);
    # then the other concurrencies, the modes of one level adjacent in time
    ref = steered_at
    first = [(m, s) for m, s in (("continuous", False), ("continuous", True), ("sequential", False),
                                 ("static", False), ("vllm", False), ("vllm", True)) if m in args.modes]
    schedule = [(m, ref, s, r) for r in range(rounds) for m, s in (first if r % 2 == 0 else first[::-1])]
    schedule += [(m, c, s, 0) for c in clients_levels if c != ref for m in args.modes
                 for s in ((False, True) if args.steered_everywhere and m in ("continuous", "vllm") else (False,))]

    def cell_requests(mode: str, clients: int) -> int:
        if clients == ref:
            return ref_seq_requests if mode == "sequential" else ref_requests
        return n_requests(mode, clients)

    with ExitStack() as stack:
        servers = {}
        for mode in args.modes:  # one server per mode, all up for the whole run (idle engines only poll)
            if mode == "vllm":  # the same app and registry; vLLM's scheduler and paged KV cache
                from steerlens.models import resolve_checkpoint

                opts = {"dtype": "float32"} if torch.cuda.is_available() else {
                    "dtype": "float32", "kv_cache_memory_bytes": int(args.vllm_kv_cache_gib * 2**30)}
                app, engine = build(model, model_id=MODEL_ID, max_batch=args.max_batch, max_queue=64, engine="vllm",
                                    checkpoint=str(resolve_checkpoint(MODEL_ID)), vllm_options=opts)
            else:
                app, engine = build(model, model_id=MODEL_ID, max_batch=1 if mode == "sequential" else args.max_batch,
                                    max_queue=64, mode="static" if mode == "static" else "continuous",
                                    batch_window=args.window)
            for name, v in vectors.items():
                app.state.registry.add_vector(name, v)
            server = stack.enter_context(Server(app, engine))
            warm = min(4, engine.max_batch)  # warm-up, not measured: first-call costs and a small batch
            asyncio.run(drive(server.url, clients=warm, n_requests=warm, max_tokens=2, limit=120))
            if any(m == mode and s for m, _, s, _ in schedule):  # and the steering code's first calls
                asyncio.run(drive(server.url, clients=warm, n_requests=warm, max_tokens=2, limit=120, steering=steering))
            servers[mode] = (app, server)
        for mode, clients, steered, r in schedule:
            key = f"{mode}/{clients}/{'steered' if steered else 'unsteered'}/{r}"
            left = hard_end - time.monotonic()
            if left < 5:
                out["cells"][key] = {"skipped": "the run's time limit passed"}
                print(json.dumps({key: "skipped"}), file=sys.stderr, flush=True)
                continue
            app, server = servers[mode]
            before = snapshot(app)
            cell = asyncio.run(drive(server.url, clients=clients, n_requests=cell_requests(mode, clients),
                                     max_tokens=max_tokens, limit=min(cell_limit, left),
                                     steering=steering if steered else None))
            cell.update(batch_stats(app, before), mode=mode, steered=steered,
                        loadavg=[round(x, 2) for x in os.getloadavg()])
            out["cells"][key] = cell
            print(json.dumps({key: {k: cell[k] for k in ("completed", "tok_s", "p50_s", "p95_s", "mean_decode_rows",
                                                          "capped", "n_errors", "loadavg")}}),
                  file=sys.stderr, flush=True)
    out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    out["run_s"] = round(time.monotonic() - started, 1)

    # -- summary: pooled cells, ratios, the table -----------------------------------------------------
    rows: dict[tuple[str, int, bool], dict] = {}
    for mode in args.modes:
        for clients in clients_levels:
            for steered in (False, True):
                cells = [c for c in out["cells"].values()
                         if "skipped" not in c and c["mode"] == mode and c["clients"] == clients
                         and c["steered"] == steered and c["completed"]]
                if cells:
                    rows[(mode, clients, steered)] = pooled(cells)
    out["summary"] = {f"{m}/{c}/{'steered' if s else 'unsteered'}": r for (m, c, s), r in rows.items()}

    def get(mode: str, clients: int, steered: bool = False) -> dict:
        return rows.get((mode, clients, steered), {})

    cont, seq, stat = get("continuous", ref), get("sequential", ref), get("static", ref)
    steered_row = get("continuous", ref, True)

    def per_round(num: tuple[str, str], den: tuple[str, str]) -> list[float | None]:
        """The ratio of two cells of the same round (adjacent in time), round by round."""
        cells = out["cells"]
        return [ratio(cells.get(f"{num[0]}/{ref}/{num[1]}/{r}", {}).get("tok_s"),
                      cells.get(f"{den[0]}/{ref}/{den[1]}/{r}", {}).get("tok_s")) for r in range(rounds)]

    pairs = {"continuous_over_sequential": (("continuous", "unsteered"), ("sequential", "unsteered"), cont, seq),
             "static_over_sequential": (("static", "unsteered"), ("sequential", "unsteered"), stat, seq),
             "continuous_over_static": (("continuous", "unsteered"), ("static", "unsteered"), cont, stat),
             "steered_over_unsteered": (("continuous", "steered"), ("continuous", "unsteered"), steered_row, cont)}
    if "vllm" in args.modes:
        vl, vl_steered = get("vllm", ref), get("vllm", ref, True)
        pairs["vllm_over_continuous"] = (("vllm", "unsteered"), ("continuous", "unsteered"), vl, cont)
        pairs["vllm_steered_over_unsteered"] = (("vllm", "steered"), ("vllm", "unsteered"), vl_steered, vl)
    out["ratios"] = {}
    for name, (num, den, a, b) in pairs.items():
        out["ratios"][f"{name}_tok_s_at_{ref}"] = ratio(a.get("tok_s"), b.get("tok_s"))
        out["ratios"][f"{name}_tok_s_at_{ref}_per_round"] = rr = per_round(num, den)
        rr = [x for x in rr if x is not None]
        out["ratios"][f"{name}_tok_s_at_{ref}_median_round"] = round(statistics.median(rr), 3) if rr else None
    out["ratios"][f"continuous_p95_over_p50_at_{ref}"] = ratio(cont.get("p95_s"), cont.get("p50_s"))

    def fmt(x, nd=2):
        return "–" if x is None else f"{x:.{nd}f}"

    lines = [(f"Serving {MODEL_ID}, {max_tokens} tokens per request, temperature 0, max_batch {args.max_batch}, "
             f"static window {args.window * 1000:.0f} ms, {out['torch_threads']} torch threads, "
             f"load average {out['loadavg_start'][0]:.2f} at start / {out['loadavg_end'][0]:.2f} at end"),
             "", "| mode | clients | requests | tokens/s | p50 s | p95 s | p95/p50 | rows per decode step |",
             "|---|---|---|---|---|---|---|---|"]
    for mode in args.modes:  # every scheduled cell, the ones the time limit cut or skipped too
        for clients in clients_levels:
            for steered in (False, True):
                if (mode, clients, steered) not in rows and any(
                        (m, c, st) == (mode, clients, steered) for m, c, st, _ in schedule):
                    rows[(mode, clients, steered)] = None
    rows = dict(sorted(rows.items(), key=lambda kv: (args.modes.index(kv[0][0]), kv[0][1], kv[0][2])))
    for (mode, clients, steered), r in rows.items():
        label = mode + (", steered (a different vector per request)" if steered else "")
        if r is None:
            lines.append(f"| {label} | {clients} | none completed: cut or skipped by the time limit | | | | | |")
            continue
        cap = " (capped)" if r["capped"] else ""
        lines.append(f"| {label} | {clients} | {r['completed']}/{r['requests']}{cap} | {fmt(r['tok_s'])} | "
                     f"{fmt(r['p50_s'])} | {fmt(r['p95_s'])} | {fmt(ratio(r['p95_s'], r['p50_s']))} | "
                     f"{fmt(r['mean_decode_rows'], 1)} |")
    rt = out["ratios"]

    def line(name: str, label: str, target: str, nd: int = 2, unit: str = "×") -> str:
        each = ", ".join(fmt(x, nd) for x in rt[f"{name}_tok_s_at_{ref}_per_round"])
        pooled_, median = rt[f"{name}_tok_s_at_{ref}"], rt[f"{name}_tok_s_at_{ref}_median_round"]
        return (f"| {label}, {ref} clients | {fmt(pooled_, nd)}{unit if pooled_ else ''} | "
                f"{fmt(median, nd)}{unit if median else ''} ({each}) | {target} |")

    lines += ["", f"| ratio (same run) | pooled over {rounds} rounds | median of rounds (each round) | target |",
              "|---|---|---|---|",
              line("continuous_over_sequential", "continuous / sequential tokens/s", "≥ 3×"),
              line("static_over_sequential", "static / sequential tokens/s", "–"),
              line("continuous_over_static", "continuous / static tokens/s", "–"),
              line("steered_over_unsteered", "steered / unsteered tokens/s (continuous)", "≥ 0.95", 3, ""),
              f"| p95 / p50 latency, continuous, {ref} clients | {fmt(rt[f'continuous_p95_over_p50_at_{ref}'])} | | ≤ 2 |"]
    if "vllm" in args.modes:
        lines += [line("vllm_over_continuous", "vLLM / in-process continuous tokens/s", "≥ 2×"),
                  line("vllm_steered_over_unsteered", "steered / unsteered tokens/s (vLLM)", "≥ 0.90", 3, "")]
    out["table_markdown"] = "\n".join(lines)
    print("\n".join(lines))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"\nwrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
