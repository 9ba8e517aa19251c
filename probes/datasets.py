"""Shipped datasets as labelled rows for probing: one row per prompt with ``label`` and ``group``.

``labelled_rows("truth")`` is the truth-probe recipe's training set: the affirmative
``truthfulness`` statements and their ``negations`` together (Marks & Tegmark 2023, "The Geometry
of Truth", §4: a probe trained on affirmations alone reads negated statements backwards)."""

from __future__ import annotations

import os
from collections.abc import Sequence

#: The datasets ``labelled_rows("truth")`` combines: affirmations and their negations. A statement
#: and its negations share one ``group`` (see the datasets' cards), so a grouped split keeps them
#: together.
TRUTH: tuple[str, ...] = ("truthfulness", "negations")
#: Truth-like datasets a truth probe's transfer is reported on (``probes.transfer_report``).
TRUTH_FAMILIES: tuple[str, ...] = ("truthfulness", "negations", "arithmetic")
_ALIASES = {"truth": TRUTH}


def labelled_rows(name: str | Sequence[str]) -> list[dict]:
    """Rows ``{"prompt", "label", "group", ...}`` of the shipped dataset ``name``.

    Statement and instruction records map one to one (their extra fields, e.g. ``family`` or
    ``category``, are kept); a contrastive pair (``sentiment``) gives two rows sharing its
    group: the positive sentence (label 1) and the negative one (label 0).

    ``name`` may also be several datasets (a sequence, or ``"a+b"``), concatenated in that order,
    or ``"truth"``: ``truthfulness`` + ``negations``, the truth-probe recipe. Rows of combined
    datasets carry a ``"dataset"`` field naming where each came from; their groups are kept as
    shipped, so rows of different datasets that share a group (a statement and its negation)
    stay on one side of any grouped split.
    """
    names = _names(name)
    if len(names) == 1:
        return _rows(names[0])
    out = []
    for n in names:
        out += [{**r, "dataset": n} for r in _rows(n)]
    return out


def dataset_names(name: str | Sequence[str]) -> tuple[str, ...]:
    """The shipped datasets ``labelled_rows(name)`` reads, in order."""
    return _names(name)


def _names(name: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(name, str):
        if name in _ALIASES:
            return _ALIASES[name]
        names = (name,) if os.path.isfile(name) else tuple(p.strip() for p in name.split("+") if p.strip())
    else:
        names = tuple(name)
        if not all(isinstance(n, str) for n in names):
            raise TypeError(f"name must be a dataset name or a sequence of names, got {name!r}")
    if not names:
        raise ValueError(f"name must name at least one dataset, got {name!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"name lists a dataset twice: {names}")
    return names


def _rows(name: str) -> list[dict]:
    from steerlens import data

    rows = data.prompt_rows(name)
    if not rows:
        raise ValueError(f"dataset {name!r} is empty")
    if "label" not in rows[0]:
        raise ValueError(f"dataset {name!r} has no binary labels to probe (fields: {sorted(rows[0])})")
    return rows
