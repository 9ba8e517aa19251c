"""Time of one ROME edit on the embedded Gemma 3 270M, split into key, value and update (the key
statistics cached), the key statistics per 10k tokens read from a corpus and of the default
corpus (sampled from the model, the default budget), the load time of a cached covariance, and
one sampling draw over the 262k vocabulary (``torch.multinomial`` vs the two-stage
``steerlens.generation.categorical``) against a forward pass of as many rows of one token.

    python benchmarks/bench_editing.py [--layer 2] [--tokens 10000] [--sampled-tokens 8000] [--edits 3] [--sampler-rows 256] [--threads 0] [--json out.json]

``--threads 0`` keeps torch's default thread count; ``--sampled-tokens 0`` skips the sampled
corpus, ``--sampler-rows 0`` the sampler timing. Uses the shipped ``facts`` dataset when it is there, else three hand-written requests;
the edits use statistics of the shipped datasets' text.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

import steerlens
from editing import covariance
from editing.covariance import key_statistics, shipped_corpus
from editing.rome import RomeConfig, as_request, edit

FALLBACK = [
    as_request(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_true=" Paris", target_new=" London"),
    as_request(prompt="Toyota is a company from the country of", subject="Toyota", target_true=" Japan", target_new=" Germany"),
    as_request(prompt="The official language of Brazil is", subject="Brazil", target_true=" Portuguese", target_new=" French"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=10_000, help="tokens for the statistics timing")
    ap.add_argument("--sampled-tokens", type=int, default=covariance.DEFAULT_TOKENS,
                    help="budget for the default (model-sampled) corpus timing; 0 skips it")
    ap.add_argument("--edits", type=int, default=3)
    ap.add_argument("--sampler-rows", type=int, default=256, help="rows of the sampler timing; 0 skips it")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = steerlens.load_model()
    model("warm up")
    out: dict = {"threads": torch.get_num_threads(), "layer": args.layer}

    # key statistics from scratch (no cache), then a cached load in a fresh in-process memo
    with tempfile.TemporaryDirectory() as tmp:
        old = os.environ.get("STEERLENS_CACHE")
        os.environ["STEERLENS_CACHE"] = tmp
        try:
            t = time.perf_counter()
            stats = key_statistics(model, args.layer, corpus=shipped_corpus(), n_tokens=args.tokens, progress=False)
            secs = time.perf_counter() - t
            out["stats_tokens"] = stats.n
            out["stats_seconds"] = secs
            out["stats_seconds_per_10k_tokens"] = secs * 10_000 / stats.n
            covariance._MEMO.clear()
            t = time.perf_counter()
            key_statistics(model, args.layer, corpus=shipped_corpus(), n_tokens=args.tokens, progress=False)
            out["cached_stats_load_seconds"] = time.perf_counter() - t
            if args.sampled_tokens:
                t = time.perf_counter()
                sampled = key_statistics(model, args.layer, n_tokens=args.sampled_tokens, progress=False)
                secs = time.perf_counter() - t
                out["sampled_stats_tokens"] = sampled.n
                out["sampled_stats_seconds"] = secs
                out["sampled_stats_seconds_per_10k_tokens"] = secs * 10_000 / sampled.n
        finally:
            if old is None:
                del os.environ["STEERLENS_CACHE"]
            else:
                os.environ["STEERLENS_CACHE"] = old

    reqs = FALLBACK
    if "facts" in steerlens.data.names():
        reqs = steerlens.data.load("facts")
    reqs = list(reqs)[: args.edits]
    cfg = RomeConfig()
    # prefixes are sampled once per (model, seed) and cached: time that apart
    from editing.prompts import _PREFIXES, prefixes

    _PREFIXES.clear()
    t = time.perf_counter()
    prefixes(model, cfg.n_prefixes, cfg.prefix_tokens, cfg.seed)
    out["prefixes_seconds_first_time_or_disk"] = time.perf_counter() - t
    parts: dict[str, list[float]] = {"stats": [], "key": [], "value": [], "update": [], "total": []}
    steps = []
    for r in reqs:
        t = time.perf_counter()
        h = edit(model, r, layer=args.layer, stats=stats, config=cfg, progress=False)
        parts["total"].append(time.perf_counter() - t)
        for k, v in h.result.seconds.items():
            parts.setdefault(k, []).append(v)  # e.g. "prefixes" when the edit sampled them
        steps.append(len(h.result.loss))
        h.revert()
    out["edit_seconds_median"] = {k: statistics.median(v) for k, v in parts.items() if v}
    out["value_steps"] = steps
    if args.sampler_rows:
        out["sampler"] = sampler_timing(model, args.sampler_rows)
    print(json.dumps(out, indent=1))
    if args.json:
        from steerlens.io import write_json

        write_json(args.json, out)


def sampler_timing(model, rows: int, repeats: int = 3) -> dict:
    """One draw per row from ``[rows, vocab]`` probabilities: ``torch.multinomial`` (serial per
    row) vs ``steerlens.generation.categorical``, and a forward pass of ``rows`` one-token rows
    with logits (about one decode step's model cost), median of ``repeats`` after a warm-up."""
    from steerlens.generation import categorical

    gen = torch.Generator().manual_seed(0)
    vocab = int(model.cfg.d_vocab)
    probs = (3 * torch.randn(rows, vocab, generator=gen)).softmax(-1)
    ids = torch.full((rows, 1), int(model.tokenizer.bos_token_id))

    def median_s(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    with torch.inference_mode():
        res = {"rows": rows, "vocab": vocab,
               "multinomial_s": median_s(lambda: torch.multinomial(probs, 1, generator=gen)),
               "categorical_s": median_s(lambda: categorical(probs, gen)),
               "forward_one_token_rows_s": median_s(lambda: model(ids, return_type="logits"))}
    res["multinomial_over_categorical"] = res["multinomial_s"] / res["categorical_s"]
    res["multinomial_over_forward"] = res["multinomial_s"] / res["forward_one_token_rows_s"]
    return res


if __name__ == "__main__":
    main()
