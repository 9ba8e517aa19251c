"""probes.labelled_rows: shipped datasets as rows, and the combined truth recipe's rows."""

import numpy as np
import pytest

from probes import grouped_split, labelled_rows
from probes.datasets import TRUTH, dataset_names


def test_single_dataset_rows_are_unchanged():
    rows = labelled_rows("truthfulness")
    assert len(rows) == 872 and "dataset" not in rows[0]
    assert set(rows[0]) == {"prompt", "label", "family", "group"}


def test_truth_recipe_rows_combine_affirmations_and_negations():
    rows = labelled_rows("truth")
    assert TRUTH == ("truthfulness", "negations") == dataset_names("truth")
    assert len(rows) == 872 * 2 and [r["dataset"] for r in rows] == ["truthfulness"] * 872 + ["negations"] * 872
    assert labelled_rows(["truthfulness", "negations"]) == rows == labelled_rows("truthfulness+negations")
    # a statement and its negations share a group: 4 rows per group, both classes in each dataset
    by_group = {}
    for r in rows:
        by_group.setdefault(r["group"], []).append((r["dataset"], r["label"]))
    assert len(by_group) == 436
    assert all(sorted(v) == [("negations", 0), ("negations", 1), ("truthfulness", 0), ("truthfulness", 1)]
               for v in by_group.values())


def test_grouped_split_keeps_a_statement_with_its_negation():
    rows = labelled_rows("truth")
    y = np.array([r["label"] for r in rows])
    g = np.array([r["group"] for r in rows])
    parts = grouped_split(y, g, seed=0)
    sets = [set(g[p]) for p in parts]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


def test_bad_names():
    with pytest.raises(ValueError, match="neither a shipped dataset"):
        labelled_rows("truthiness")
    with pytest.raises(ValueError, match="twice"):
        labelled_rows(["negations", "negations"])
    with pytest.raises(ValueError, match="no binary labels"):
        labelled_rows("facts")
    with pytest.raises(TypeError, match="sequence of names"):
        labelled_rows(["truthfulness", 3])
