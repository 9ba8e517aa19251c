"""Shipped datasets as labelled rows for probing: one row per prompt with ``label`` and ``group``."""

from __future__ import annotations

import dataclasses


def labelled_rows(name: str) -> list[dict]:
    """Rows ``{"prompt", "label", "group", ...}`` of the shipped dataset ``name``.

    Statement and instruction records map one to one (their extra fields, e.g. ``family`` or
    ``category``, are kept); a contrastive pair (``sentiment``) gives two rows sharing its
    group: the positive sentence (label 1) and the negative one (label 0).
    """
    from steerlens import data

    rows = []
    for rec in data.load(name):
        fields = dataclasses.asdict(rec)
        if "positive" in fields and "negative" in fields:
            extra = {k: v for k, v in fields.items() if k not in ("positive", "negative")}
            rows.append({"prompt": fields["positive"], "label": 1, **extra})
            rows.append({"prompt": fields["negative"], "label": 0, **extra})
        elif "label" in fields and "text" in fields:
            rows.append({"prompt": fields.pop("text"), **fields})
        else:
            raise ValueError(f"dataset {name!r} has no binary labels to probe (fields: {sorted(fields)})")
    if not rows:
        raise ValueError(f"dataset {name!r} is empty")
    return rows
