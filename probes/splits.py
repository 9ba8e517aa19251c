"""Grouped, seeded train/validation/test splits: rows that share a group (a contrastive pair, a
statement and its negation) always land in the same split."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from jaxtyping import Shaped


def grouped_split(
    labels: Shaped[np.ndarray, " n"],
    groups: Shaped[np.ndarray, " n"] | None = None,
    *,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    max_tries: int = 100,
) -> tuple[np.ndarray, ...]:
    """Index arrays, one per entry of ``fractions`` (e.g. train, val, test), over whole groups.

    Groups are shuffled with ``seed`` and dealt out to the splits in order of how far each split
    is below its target row count; a split is re-drawn (with the next seed) until every split
    holds both classes, up to ``max_tries`` times. ``groups=None`` makes every row its own group.
    """
    y = np.asarray(labels)
    n = len(y)
    if n == 0:
        raise ValueError("labels is empty: nothing to split")
    groups = np.arange(n) if groups is None else np.asarray(groups)
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} labels")
    fr = np.asarray(fractions, dtype=float)
    if fr.ndim != 1 or len(fr) < 2 or (fr <= 0).any():
        raise ValueError(f"fractions must be two or more positive numbers, got {tuple(fractions)}")
    fr = fr / fr.sum()
    uniq, inverse = np.unique(groups, return_inverse=True)
    if len(uniq) < len(fr):
        raise ValueError(f"{len(uniq)} groups cannot fill {len(fr)} splits")
    members = [np.flatnonzero(inverse == g) for g in range(len(uniq))]
    classes = np.unique(y)
    for attempt in range(max_tries):
        rng = np.random.default_rng([seed, attempt])
        target, filled = fr * n, np.zeros(len(fr))
        assign: list[list[int]] = [[] for _ in fr]
        for g in rng.permutation(len(uniq)):
            k = int(np.argmax(target - filled))  # the split furthest below its share
            assign[k].extend(members[g].tolist())
            filled[k] += len(members[g])
        out = tuple(np.sort(np.asarray(a, dtype=np.int64)) for a in assign)
        if all(len(o) and len(np.unique(y[o])) == len(classes) for o in out):
            return out
    raise ValueError(
        f"could not draw a split in which every part holds all {len(classes)} classes after "
        f"{max_tries} tries: too few groups ({len(uniq)}) or a very rare class"
    )
