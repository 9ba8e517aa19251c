"""Scripted experiments: a JSONL list of edits, or a JSON/TOML spec, run through
``evaluate_edits`` into one report."""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from editing.evaluation import EditReport

_OPTIONS = {"model", "mode", "stacked", "layer", "corpus", "n_tokens", "edits", "dataset", "ids", "limit",
            "fluency_tokens", "fluency_samples", "config", "seed"}


def load_spec(path: str | os.PathLike) -> dict[str, Any]:
    """``.jsonl``: one edit per line (full fields, or ``{"id": ...}`` of a shipped ``facts``
    record); ``.json``/``.toml``: options (see ``run_experiment``) with ``edits`` or ``dataset``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment file not found: {path}")
    if path.suffix == ".jsonl":
        from steerlens.io import read_jsonl

        return {"edits": read_jsonl(path)}
    if path.suffix not in (".json", ".toml"):
        raise ValueError(f"experiment file must be .jsonl, .json or .toml, got {path.name}")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            spec = json.loads(text)
        else:
            import tomllib

            spec = tomllib.loads(text)
    except ValueError as e:  # JSONDecodeError, TOMLDecodeError, UnicodeDecodeError
        raise ValueError(f"{path}: not valid {path.suffix[1:].upper()} ({e})") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: the experiment spec must be an object, got {type(spec).__name__}")
    unknown = set(spec) - _OPTIONS
    if unknown:
        raise ValueError(f"unknown experiment options {sorted(unknown)}; allowed: {sorted(_OPTIONS)}")
    return spec


def requests_from_spec(spec: dict[str, Any]) -> list:
    """The ``EditRequest`` records a spec names."""
    from steerlens import data
    from steerlens.data import EditRequest

    facts = None
    out = []
    edits = spec.get("edits") or []
    if not isinstance(edits, list):
        raise ValueError(f"edits must be a list of objects, got {type(edits).__name__}")
    for i, row in enumerate(edits):
        if not isinstance(row, dict):
            raise ValueError(f"edits[{i}] must be an object, got {row!r}")
        if set(row) == {"id"}:
            facts = facts or {r.id: r for r in data.load("facts")}
            if row["id"] not in facts:
                raise ValueError(f"edits[{i}]: no facts record with id {row['id']!r}")
            out.append(facts[row["id"]])
            continue
        missing = {"prompt", "subject", "target_true"} - set(row)
        if missing:
            raise ValueError(f"edits[{i}] lacks {sorted(missing)}")
        known = {f.name for f in fields(EditRequest)}
        extra = set(row) - known
        if extra:
            raise ValueError(f"edits[{i}] has unknown fields {sorted(extra)}; allowed: {sorted(known)}")
        rec = {"id": f"edit-{i}", "relation": "", "target_new": "", "paraphrases": (), "neighbourhood": (), **row}
        rec["paraphrases"], rec["neighbourhood"] = tuple(rec["paraphrases"]), tuple(rec["neighbourhood"])
        out.append(EditRequest(**rec))
    if spec.get("dataset"):
        recs = data.load(spec["dataset"])
        if spec.get("ids"):
            wanted = set(spec["ids"])
            recs = [r for r in recs if r.id in wanted]
        out += recs[: spec["limit"]] if spec.get("limit") else recs
    if not out:
        raise ValueError("the experiment names no edits: give 'edits' or 'dataset'")
    return out


def run_experiment(
    spec: str | os.PathLike | dict[str, Any],
    *,
    model: "TransformerBridge | None" = None,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    **overrides: Any,
) -> "EditReport":
    """Run a spec: options ``mode`` ("rewrite"/"erase"), ``stacked`` (bool), ``layer``,
    ``corpus`` (a text/JSONL file for the key statistics, or ``"shipped"``; default: model-sampled text),
    ``n_tokens``, ``model``, ``fluency_tokens``, ``fluency_samples``, ``seed``, ``config``
    (``RomeConfig`` fields). Keyword ``overrides`` win over the file. Writes a report to ``out``."""
    from editing.evaluation import evaluate_edits
    from editing.report import write_report
    from editing.rome import RomeConfig

    spec = dict(load_spec(spec) if not isinstance(spec, dict) else spec)
    spec.update({k: v for k, v in overrides.items() if v is not None})
    requests = requests_from_spec(spec)
    if model is None:
        from steerlens.models import load_model

        model = load_model(spec.get("model", "gemma-3-270m"))
    cfg = dict(spec.get("config") or {})
    for k in ("n_tokens", "seed"):
        if k in spec:
            cfg[k] = spec[k]
    bad = set(cfg) - {f.name for f in fields(RomeConfig)}
    if bad:
        raise ValueError(f"unknown config fields {sorted(bad)}; allowed: {[f.name for f in fields(RomeConfig)]}")
    report = evaluate_edits(
        model, requests, mode=spec.get("mode", "rewrite"), stacked=bool(spec.get("stacked", False)),
        layer=spec.get("layer"), corpus=spec.get("corpus"), config=RomeConfig(**cfg),
        fluency_tokens=spec.get("fluency_tokens", 32), fluency_samples=spec.get("fluency_samples", 2),
        progress=progress,
    )
    if out is not None:
        write_report(report, out, title=f"steerlens edit run ({report.mode})")
    return report
