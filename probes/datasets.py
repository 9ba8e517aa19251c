"""Shipped datasets as labelled rows for probing: one row per prompt with ``label`` and ``group``."""

from __future__ import annotations


def labelled_rows(name: str) -> list[dict]:
    """Rows ``{"prompt", "label", "group", ...}`` of the shipped dataset ``name``.

    Statement and instruction records map one to one (their extra fields, e.g. ``family`` or
    ``category``, are kept); a contrastive pair (``sentiment``) gives two rows sharing its
    group: the positive sentence (label 1) and the negative one (label 0).
    """
    from steerlens import data

    rows = data.prompt_rows(name)
    if not rows:
        raise ValueError(f"dataset {name!r} is empty")
    if "label" not in rows[0]:
        raise ValueError(f"dataset {name!r} has no binary labels to probe (fields: {sorted(rows[0])})")
    return rows
