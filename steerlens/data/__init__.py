"""Shipped datasets as typed records: ``load("truthfulness")``, ``card(...)``, ``digest(...)``."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Union


@dataclass(frozen=True)
class Statement:
    """A true (``label=1``) or false (``label=0``) statement."""

    text: str
    label: int
    family: str
    group: str


@dataclass(frozen=True)
class Instruction:
    """A harmful (``label=1``) or harmless (``label=0``) instruction."""

    text: str
    label: int
    category: str
    group: str


@dataclass(frozen=True)
class ContrastivePair:
    """The same sentence with a positive and with a negative evaluation."""

    positive: str
    negative: str
    topic: str
    group: str


@dataclass(frozen=True)
class EditRequest:
    """A factual edit: make the model complete ``prompt`` with ``target_new`` instead of ``target_true``."""

    id: str
    relation: str
    subject: str
    prompt: str
    target_true: str
    target_new: str
    paraphrases: tuple[str, ...]
    neighbourhood: tuple[str, ...]


Record = Union[Statement, Instruction, ContrastivePair, EditRequest]

_KINDS: dict[str, type] = {
    "arithmetic": Statement,
    "facts": EditRequest,
    "harmfulness": Instruction,
    "negations": Statement,
    "sentiment": ContrastivePair,
    "truthfulness": Statement,
}
_N_PARAPHRASES, _N_NEIGHBOURS = 2, 3

__all__ = [
    "ContrastivePair", "EditRequest", "Instruction", "Statement",
    "card", "digest", "load", "load_jsonl", "names", "prompt_rows", "round_robin",
]


def names() -> list[str]:
    """Names of the shipped datasets."""
    return sorted(_KINDS)


def load(name: str) -> list[Record]:
    """The shipped dataset ``name`` as typed records, in file order."""
    _check_name(name)
    with resources.as_file(resources.files(__name__) / f"{name}.jsonl") as path:
        return load_jsonl(path, name)


def card(name: str) -> str:
    """The markdown card of dataset ``name``: what it is, how it was made, labels, size."""
    _check_name(name)
    return (resources.files(__name__) / f"{name}.md").read_text(encoding="utf-8")


def digest(name: str) -> str:
    """sha256 hex digest of dataset ``name``'s JSONL file, for provenance metadata."""
    _check_name(name)
    return hashlib.sha256((resources.files(__name__) / f"{name}.jsonl").read_bytes()).hexdigest()


def round_robin(records: Sequence[Record], n: int, by: str = "relation") -> list[Record]:
    """The first ``n`` records taking one value of field ``by`` at a time, in file order (e.g. ten
    edit requests over ten relations rather than ten of the first relation)."""
    groups: dict[Any, list[Record]] = {}
    for r in records:
        groups.setdefault(getattr(r, by), []).append(r)
    out: list[Record] = []
    i = 0
    while len(out) < n and any(i < len(g) for g in groups.values()):
        out += [g[i] for g in groups.values() if i < len(g)]
        i += 1
    return out[:n]


def load_jsonl(path: str | os.PathLike, kind: str) -> list[Record]:
    """Typed records from a JSONL file with the fields of dataset ``kind`` (one of ``names()``)."""
    from steerlens.io import read_jsonl

    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {names()}, got {kind!r}")
    rows = read_jsonl(path)
    if not rows:
        raise ValueError(f"{path}: no records (empty file)")
    with open(path, encoding="utf-8") as f:  # read_jsonl skips blank lines; map rows to line numbers
        line_nos = [i for i, line in enumerate(f, 1) if line.strip()]
    cls = _KINDS[kind]
    return [_record(cls, row, f"{path}:{line}") for row, line in zip(rows, line_nos)]


def prompt_rows(source: str | os.PathLike) -> list[dict]:
    """Capture-ready rows ``{"prompt": ..., **fields}`` of a shipped dataset or of a JSONL file.

    Statements and instructions map one to one (``text`` becomes ``prompt``); a contrastive pair
    gives two rows sharing its group, the positive sentence (``label`` 1) then the negative one
    (``label`` 0); an edit request keeps its fields. A JSONL file needs a ``prompt`` or ``text``
    field per line; its other fields are kept.
    """
    if str(source) in _KINDS:
        rows = []
        for rec in load(str(source)):
            fields = dataclasses.asdict(rec)
            if isinstance(rec, ContrastivePair):
                rest = {k: v for k, v in fields.items() if k not in ("positive", "negative")}
                rows += [{"prompt": rec.positive, "label": 1, **rest}, {"prompt": rec.negative, "label": 0, **rest}]
            elif isinstance(rec, EditRequest):
                rows.append(fields)
            else:
                rows.append({"prompt": fields.pop("text"), **fields})
        return rows
    from steerlens.io import read_jsonl

    if not os.path.isfile(source):
        raise ValueError(f"{source!r} is neither a shipped dataset {names()} nor a JSONL file")
    rows = read_jsonl(source)
    if not rows:
        raise ValueError(f"{source}: no records (empty file)")
    out = []
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("prompt", row.get("text")), str):
            raise ValueError(f"{source}: record {i} has no string 'prompt' or 'text' field")
        row = dict(row)
        out.append({"prompt": row.pop("prompt") if "prompt" in row else row.pop("text"), **row})
    return out


def _check_name(name: str) -> None:
    if name not in _KINDS:
        raise ValueError(f"unknown dataset {name!r}; available: {names()}")


def _record(cls: type, row: Any, where: str) -> Record:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    missing = [k for k in fields if k not in row]
    extra = [k for k in row if k not in fields]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing} for a {cls.__name__} (fields: {list(fields)})")
    if extra:
        raise ValueError(f"{where}: unexpected field(s) {extra} for a {cls.__name__} (fields: {list(fields)})")
    values = {}
    for key, value in row.items():
        if key == "label":
            if type(value) is not int or value not in (0, 1):
                raise ValueError(f"{where}: field 'label' must be 0 or 1, got {value!r}")
        elif key in ("paraphrases", "neighbourhood"):
            want = _N_PARAPHRASES if key == "paraphrases" else _N_NEIGHBOURS
            if not isinstance(value, list) or len(value) != want:
                raise ValueError(f"{where}: field {key!r} must be a list of {want} prompts, got {value!r}")
            for v in value:
                _check_str(v, key, where)
            value = tuple(value)
        else:
            _check_str(value, key, where)
        values[key] = value
    if cls is EditRequest:
        _check_edit(values, where)
    return cls(**values)


def _check_str(value: Any, key: str, where: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")


def _check_edit(v: dict[str, Any], where: str) -> None:
    if v["subject"] not in v["prompt"]:
        raise ValueError(f"{where}: field 'prompt' must contain the subject {v['subject']!r}, got {v['prompt']!r}")
    if v["target_new"] == v["target_true"]:
        raise ValueError(f"{where}: target_new equals target_true ({v['target_true']!r})")
