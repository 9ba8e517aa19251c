"""ROME's edit layer, early stop, prefix seed and covariance corpus on the embedded Gemma 3 270M.

The tables behind benchmarks/README.md's editing section ("Layer choice", "Edits of the 10 test facts"):

    python benchmarks/bench_edit_choices.py            # every table (~40 min on 2 CPU cores)
    python benchmarks/bench_edit_choices.py --quick    # a smoke run (~2 min)

1. **Spill.** A rank-one edit of layer L adds Λ·(uᵀk)/(uᵀk*) at a key k (u = C⁻¹k*, ridge
   ``RomeConfig.cov_reg``), so its effect on another subject's prompt is in proportion to
   uᵀk/uᵀk*. For the first ``--spill-facts`` shipped ``facts`` (round-robin over relations) and
   their 3 neighbourhood prompts (same relation and true object, other subjects): k* is the edit's
   key (prompt + ``RomeConfig.n_prefixes`` sampled prefixes, prefix seed 0), k the key at the last
   token of the neighbour's subject in its neighbourhood prompt as evaluated (no prefix); the mean
   spill per layer, with the covariance of the shipped datasets' text (20k tokens) at
   ``--spill-layers`` and of the default corpus (8k model-sampled tokens) at ``--spill-default-layers``;
   also with the neighbour's key averaged over the same prefixes as k* (like for like).
2. **Edits.** ``editing.evaluate_edits`` (rewrite, one at a time, each reverted; no fluency
   sampling) of the ``--facts`` test facts (``data.round_robin(facts, n)``, as
   tests/test_editing_gemma.py) and of the next ``--facts`` in the same order ("other facts"):
   efficacy / paraphrase / neighbourhood at ``--layer`` for each early stop (target NLL) x prefix
   seed (``RomeConfig.seed``) x corpus, and at ``--compare-layers`` x ``--compare-early-stops``
   (prefix seed 0, shipped text; plus the default corpus at ``--compare-default-layers``). The
   unedited model's scores are measured in the same run (neighbourhood 1.00: the dataset keeps
   only neighbours the model gets right).

Corpora: ``shipped`` = ``editing.covariance.shipped_corpus()``, 20k tokens (the acceptance test's);
``default`` = model-sampled text, 8k tokens, sampled with the cell's seed (what ``edit`` does
without ``corpus=``). Key statistics are disk-cached by ``editing.covariance.key_statistics``, so
a rerun skips them (the sampled corpus costs ~110 s per layer the first time). Markdown goes to
stdout, figures to ``--json`` after every cell (a stopped run keeps what it measured).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import steerlens
from editing import covariance
from editing.covariance import key_statistics, shipped_corpus
from editing.evaluation import evaluate_edits
from editing.prompts import prefixes
from editing.rome import RomeConfig, compute_key
from steerlens import data
from steerlens.io import write_json

CORPORA = ("shipped", "default")
#: rough costs on 2 CPU cores, for the plan printed before the run
EDIT_S, SHIPPED_STATS_S, SAMPLED_STATS_S = 6.5, 15.0, 110.0


def floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def names(s: str) -> list[str]:
    out = [x.strip() for x in s.split(",") if x.strip()]
    bad = set(out) - set(CORPORA)
    if bad:
        raise argparse.ArgumentTypeError(f"unknown corpora {sorted(bad)}; choose from {list(CORPORA)}")
    return out


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Lists are comma-separated; an empty list ('') skips that part.")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: spill at layer 2 for 5 facts, 3 edits at layer 2, early stop 0.35, seed 0, shipped text")
    ap.add_argument("--spill-layers", type=ints, default=[1, 2, 3, 4, 6, 8])
    ap.add_argument("--spill-default-layers", type=ints, default=[1, 2, 4],
                    help="layers whose spill is also measured with the default (model-sampled) corpus")
    ap.add_argument("--spill-facts", type=int, default=20)
    ap.add_argument("--layer", type=int, default=2, help="edit layer of the early stop x seed table")
    ap.add_argument("--early-stops", type=floats, default=[0.2, 0.35])
    ap.add_argument("--seeds", type=ints, default=[0, 1, 2, 3], help="prefix seeds (RomeConfig.seed), shipped text")
    ap.add_argument("--corpora", type=names, default=list(CORPORA), help="corpora of the early stop x seed table")
    ap.add_argument("--default-seeds", type=ints, default=[0], help="prefix seeds of the default-corpus rows")
    ap.add_argument("--facts", type=int, default=10, help="test facts; 'other facts' are the next as many")
    ap.add_argument("--no-other", action="store_true", help="skip the 'other facts' column")
    ap.add_argument("--compare-layers", type=ints, default=[1, 2, 4])
    ap.add_argument("--compare-early-stops", type=floats, default=[0.05, 0.2, 0.35])
    ap.add_argument("--compare-default-layers", type=ints, default=[1, 2],
                    help="layers of the comparison table also edited with the default corpus (at --early-stops)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1, as tests/test_editing_gemma.py: steadiest on 2 shared cores; 0: torch's default)")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "out" / "edit_choices.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.spill_layers, args.spill_default_layers, args.spill_facts = [2], [], 5
        args.early_stops, args.seeds, args.corpora, args.default_seeds = [0.35], [0], ["shipped"], []
        args.facts, args.no_other = 3, True
        args.compare_layers, args.compare_early_stops, args.compare_default_layers = [], [], []
    if args.facts < 1 or args.spill_facts < 1:
        ap.error("--facts and --spill-facts must be >= 1")
    return args


class Stats:
    """Key statistics per (corpus, layer, seed), timed; what the library caches on disk is reused."""

    def __init__(self, model):
        self.model, self.seconds, self._texts = model, {}, None
        self._got: dict[tuple, covariance.KeyStatistics] = {}

    def kw(self, corpus: str, seed: int) -> dict:
        if corpus == "shipped":
            if self._texts is None:
                self._texts = shipped_corpus()
            return {"corpus": self._texts, "n_tokens": covariance.DEFAULT_CORPUS_TOKENS}
        return {"corpus": None, "n_tokens": covariance.DEFAULT_TOKENS, "seed": seed}

    def cached(self, corpus: str, layer: int, seed: int) -> bool:
        kw = self.kw(corpus, seed)
        chash = covariance.corpus_hash(kw["corpus"], kw.get("seed", 0))
        batch = covariance.SAMPLE_BATCH if kw["corpus"] is None else None
        return covariance.cache_path(self.model, layer, chash, kw["n_tokens"], 128, batch).is_file()

    def get(self, corpus: str, layer: int, seed: int = 0) -> covariance.KeyStatistics:
        key = (corpus, layer, seed if corpus == "default" else 0)
        if key not in self._got:
            t = time.perf_counter()
            self._got[key] = key_statistics(self.model, layer, progress=False, **self.kw(corpus, seed))
            self.seconds[f"{corpus}-L{layer}-seed{key[2]}"] = round(time.perf_counter() - t, 2)
        return self._got[key]


def neighbour_subject(request, prompt: str) -> str:
    """The subject of a neighbourhood prompt (the relation's template filled with another subject):
    the prompt up to the template's text after the subject, less the text before it if present
    (landmarks: "The Louvre ..." vs "Notre-Dame Cathedral ..."; the last token is the same either way)."""
    i = request.prompt.index(request.subject)
    head, tail = request.prompt[:i], request.prompt[i + len(request.subject):]
    if not prompt.endswith(tail) or len(prompt) <= len(tail):
        raise ValueError(f"neighbourhood prompt {prompt!r} does not end like {request.prompt!r}")
    rest = prompt[: len(prompt) - len(tail)]
    return rest[len(head):] if rest.startswith(head) and len(rest) > len(head) else rest


def spill(model, stats: covariance.KeyStatistics, layer: int, requests, cfg: RomeConfig) -> dict:
    """uᵀk / uᵀk* for every (request, neighbour) pair at ``layer``."""
    pre = prefixes(model, cfg.n_prefixes, cfg.prefix_tokens, cfg.seed)
    c_inv = stats.inverse(cfg.cov_reg)
    plain, prefixed, pairs = [], [], []
    for r in requests:
        k_star = compute_key(model, layer, r.prompt, r.subject, pre).double()
        u = c_inv @ k_star
        den = float(u @ k_star)
        for nb in r.neighbourhood:
            s = neighbour_subject(r, nb)
            a = float(u @ compute_key(model, layer, nb, s, []).double()) / den
            b = float(u @ compute_key(model, layer, nb, s, pre).double()) / den
            plain.append(a)
            prefixed.append(b)
            pairs.append({"id": r.id, "neighbour": s, "spill": round(a, 4), "spill_prefixed": round(b, 4)})
    return {"mean": statistics.mean(plain), "median": statistics.median(plain), "max": max(plain),
            "mean_prefixed": statistics.mean(prefixed), "pairs": pairs}


def run_cell(model, stats: Stats, cell: tuple, requests) -> dict:
    layer, es, corpus, seed, which = cell
    st = stats.get(corpus, layer, seed)
    cfg = RomeConfig(early_stop=es, seed=seed)
    t = time.perf_counter()
    rep = evaluate_edits(model, requests, mode="rewrite", layer=layer, stats=st, config=cfg,
                         fluency_samples=0, progress=False)
    b, a = rep.before.summary(), rep.after.summary()
    return {"layer": layer, "early_stop": es, "corpus": corpus, "seed": seed, "facts": which,
            "ids": [r.id for r in requests], "seconds": round(time.perf_counter() - t, 1),
            "before": {k: b[k] for k in ("efficacy", "paraphrase", "neighbourhood")},
            "after": {k: a[k] for k in ("efficacy", "paraphrase", "neighbourhood", "perplexity", "kl")},
            "steps": [e["steps"] for e in rep.edits],
            "edit_seconds_median": statistics.median(sum(e["seconds"].values()) for e in rep.edits),
            "per_fact": [{"id": f.id, "efficacy": f.efficacy, "paraphrase": f.paraphrase,
                          "neighbourhood": f.neighbourhood} for f in rep.after.facts]}


def fmt(res: dict | None) -> str:
    if res is None:
        return ""
    a = res["after"]
    return f"{a['efficacy']:.2f} / {a['paraphrase']:.2f} / {a['neighbourhood']:.2f}"


def label(corpus: str) -> str:
    return {"shipped": "shipped text (20k tokens)", "default": "default corpus (8k sampled tokens)"}[corpus]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    facts_all = data.load("facts")
    test = data.round_robin(facts_all, args.facts)
    other = [] if args.no_other else data.round_robin(facts_all, 2 * args.facts)[args.facts:]
    spill_reqs = data.round_robin(facts_all, args.spill_facts)
    sets = {"test": test, "other": other}

    # the cells: (layer, early stop, corpus, seed, fact set); shared cells run once
    seed_cells = []
    for es in args.early_stops:
        for corpus in args.corpora:
            for seed in (args.seeds if corpus == "shipped" else args.default_seeds):
                seed_cells.append((args.layer, es, corpus, seed, "test"))
            if other and corpus == "shipped":
                seed_cells.append((args.layer, es, corpus, 0, "other"))
    layer_cells = [(L, es, "shipped", 0, "test") for L in args.compare_layers for es in args.compare_early_stops]
    layer_cells += [(L, es, "default", 0, "test") for L in args.compare_default_layers for es in args.early_stops]
    cells = list(dict.fromkeys(seed_cells + layer_cells))

    model = steerlens.load_model()
    model("warm up")
    stats = Stats(model)
    needs = {("shipped", L, 0) for L in args.spill_layers} | {("default", L, 0) for L in args.spill_default_layers}
    needs |= {(c, L, s if c == "default" else 0) for L, _, c, s, _ in cells}
    new = [n for n in needs if not stats.cached(*n)]
    n_edits = sum(len(sets[c[4]]) for c in cells)
    est = n_edits * EDIT_S + sum(SHIPPED_STATS_S if c == "shipped" else SAMPLED_STATS_S for c, _, _ in new)
    print(f"plan: spill at {len(args.spill_layers) + len(args.spill_default_layers)} (corpus, layer) pairs for "
          f"{len(spill_reqs)} facts; {len(cells)} edit cells, {n_edits} edits; key statistics to compute: "
          f"{len(new)} {sorted(new)}; estimate ~{est / 60:.0f} min; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)

    out: dict = {"date": time.strftime("%Y-%m-%d"), "argv": sys.argv[1:], "threads": torch.get_num_threads(),
                 "torch": torch.__version__, "load_average_start": os.getloadavg(), "config": dataclasses.asdict(RomeConfig()),
                 "spill": {}, "cells": [], "stats_seconds": stats.seconds}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    spill_runs = [("shipped", L) for L in args.spill_layers] + [("default", L) for L in args.spill_default_layers]
    for corpus, L in spill_runs:
        t = time.perf_counter()
        res = spill(model, stats.get(corpus, L), L, spill_reqs, RomeConfig())
        res["seconds"] = round(time.perf_counter() - t, 1)
        out["spill"][f"{corpus}-L{L}"] = {"corpus": corpus, "layer": L, **res}
        print(f"spill {corpus} L{L}: mean {res['mean']:.3f} (prefixed neighbours {res['mean_prefixed']:.3f})",
              file=sys.stderr, flush=True)
        write_json(args.json, out)

    results: dict[tuple, dict] = {}
    for cell in cells:
        results[cell] = run_cell(model, stats, cell, sets[cell[4]])
        out["cells"].append(results[cell])
        print(f"cell {cell}: {fmt(results[cell])} ({results[cell]['seconds']:.0f} s)", file=sys.stderr, flush=True)
        write_json(args.json, out)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["load_average_end"] = os.getloadavg()
    write_json(args.json, out)
    print(markdown(args, out, results, sets, layer_cells))
    print(f"\nfigures written to {args.json}; {out['seconds'] / 60:.1f} min, load average "
          f"{out['load_average_start'][0]:.2f} at the start, {out['load_average_end'][0]:.2f} at the end",
          file=sys.stderr)


def markdown(args, out: dict, results: dict, sets: dict, layer_cells: list[tuple]) -> str:
    lines: list[str] = []
    n_spill = args.spill_facts
    if out["spill"]:
        layers = sorted({v["layer"] for v in out["spill"].values()})
        lines += [(f"Spill uᵀk/uᵀk* of the {n_spill} first `facts` (round-robin over relations) onto their 3 "
                  "neighbourhood subjects, mean over the pairs:"), "",
                  "| covariance | " + " | ".join(f"layer {L}" for L in layers) + " |",
                  "|---|" + "---|" * len(layers)]
        for corpus in CORPORA:
            row = [out["spill"].get(f"{corpus}-L{L}") for L in layers]
            for key, what in (("mean", "neighbour key as evaluated"), ("mean_prefixed", "neighbour key prefix-averaged like k*")):
                if any(row):
                    lines.append(f"| {label(corpus)}, {what} | " +
                                 " | ".join(f"{r[key]:.2f}" if r else "" for r in row) + " |")
        lines.append("")
    cells = out["cells"]
    before = {c["facts"]: c["before"] for c in cells}
    if any(c[0] == args.layer and c[1] in args.early_stops for c in results):
        n = args.facts
        seeds = args.seeds if "shipped" in args.corpora else args.default_seeds
        head = [f"prefix seed {s}" for s in seeds] + ([f"{n} *other* facts (seed 0)"] if sets["other"] else [])
        lines += [f"Layer {args.layer}, efficacy / paraphrase / neighbourhood of the {n} test facts:", "",
                  "| early stop, corpus | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
        for es in args.early_stops:
            for corpus in args.corpora:
                row = [fmt(results.get((args.layer, es, corpus, s, "test"))) for s in seeds]
                if sets["other"]:
                    row.append(fmt(results.get((args.layer, es, corpus, 0, "other"))))
                if any(row):
                    lines.append(f"| {es:g}, {label(corpus)} | " + " | ".join(row) + " |")
        lines.append("")
    comp = [c for c in dict.fromkeys(layer_cells) if c in results]
    if comp:
        lines += [f"Edit layer and early stop, prefix seed 0, the {args.facts} test facts:", "",
                  "| layer, early stop (target NLL), corpus | efficacy | paraphrase | neighbourhood | steps (median) |",
                  "|---|---|---|---|---|"]
        for cell in comp:
            L, es, corpus = cell[:3]
            r = results[cell]
            a = r["after"]
            lines.append(f"| {L}, {es:g}, {label(corpus)} | {a['efficacy']:.2f} | {a['paraphrase']:.2f} | "
                         f"{a['neighbourhood']:.2f} | {statistics.median(r['steps']):g} |")
        lines.append("")
    for which, b in before.items():
        lines.append(f"Unedited ({which} facts, same run): efficacy {b['efficacy']:.2f}, paraphrase "
                     f"{b['paraphrase']:.2f}, neighbourhood {b['neighbourhood']:.2f}.")
    if out["stats_seconds"]:
        lines.append("Key statistics (s; ~0 when the disk cache had them): " +
                     ", ".join(f"{k} {v:g}" for k, v in out["stats_seconds"].items()) + ".")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
