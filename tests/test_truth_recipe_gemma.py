"""Acceptance of the truth-probe recipe on the embedded Gemma 3 270M (issue 15): trained on
affirmations and their negations together (groups kept), the layer and method chosen by
leave-one-family-out transfer, reported per dataset and family and at a 1% FPR operating point
set on neutral sentences."""

import numpy as np
import pytest
import torch

import steerlens
from probes import labelled_rows, sweep_layers, transfer_report
from probes.datasets import TRUTH

pytestmark = pytest.mark.gemma

#: the topic families of truthfulness/negations: facts the model knows (the datasets' model check)
KNOWN = ("geography", "opposites", "science", "translation")


def combined(parts: dict) -> steerlens.Activations:
    """Activations of several datasets stacked, each row naming its ``dataset``."""
    first = next(iter(parts.values()))
    tensors = {h: torch.cat([a[h] for a in parts.values()]) for h in first.hooks}
    rows = [{**r, "dataset": name} for name, a in parts.items() for r in a.rows]
    lengths = torch.cat([a.lengths for a in parts.values()])
    return steerlens.Activations(tensors, rows, lengths=lengths, pool=first.pool, info=first.info)


def _capture(model, prompts, rows=None):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return steerlens.capture(model, prompts, "resid_post", pool="last", rows=rows, batch_size=32, progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def truth_acts(gemma_truth_acts, gemma_negations_acts):
    acts = combined({"truthfulness": gemma_truth_acts, "negations": gemma_negations_acts})
    assert [r["prompt"] for r in acts.rows] == [r["prompt"] for r in labelled_rows("truth")]  # the recipe's rows
    return acts


@pytest.fixture(scope="module")
def recipe(truth_acts):
    """The default recipe (``probes.transfer.truth_recipe``'s sweep) on captured activations."""
    return sweep_layers(truth_acts, seed=0, dataset="truth", lofo="family", select="lofo", n_boot=200, n_shuffle=1,
                        n_random=2)


@pytest.fixture(scope="module")
def report(gemma, recipe, truth_acts):
    from steerlens.neutral import NEUTRAL_TEXTS

    rows = labelled_rows("arithmetic")
    arithmetic = _capture(gemma, [r["prompt"] for r in rows], rows)
    control = _capture(gemma, list(NEUTRAL_TEXTS))
    return transfer_report(recipe, truth_acts, others={"arithmetic": arithmetic}, control=control)


def test_recipe_trains_on_affirmations_and_negations_without_straddling(recipe, truth_acts):
    assert TRUTH == ("truthfulness", "negations")
    g = np.array([r["group"] for r in truth_acts.rows])
    parts = [set(g[recipe.split[k]]) for k in ("train", "val", "test")]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    ds = np.array([r["dataset"] for r in truth_acts.rows])[recipe.split["train"]]
    assert set(ds) == {"truthfulness", "negations"}


def test_held_out_affirmations_and_negations_each(recipe, report):
    """Issue 15: test AUROC >= 0.93 on held-out groups of affirmations and of negations, each
    measured separately."""
    got = {d: report.auroc(d) for d in TRUTH}
    assert min(got.values()) >= 0.93, (got, recipe.picks)


def test_default_recipe_does_not_read_negations_backwards(report):
    neg = {r["family"]: r["auroc"] for r in report.rows if r["dataset"] == "negations"}
    assert min(neg.values()) >= 0.5, neg  # no family of the negations read backwards
    assert not [b for b in report.backwards if b[0] in TRUTH], report.backwards


@pytest.mark.xfail(strict=True, reason=(
    "issue 15's bar, not met: held out by topic family, the affirmations + negations probe (logistic, layer 9, "
    "seed 0) scores geography 0.73, science 0.71, translation 0.77, opposites 0.56 (mean 0.69) on 2026-12-01; "
    "the affirmations-only probe transfers across topics (0.84-0.99) but reads negations backwards; the "
    "polarity-invariant direction t_G (Buerger et al. 2024) is at chance out of family at layers 4-14 "
    "(bench_probes.py --general-direction). "
    "strict: passing means the recipe improved, so turn this into a plain test"))
def test_leave_one_family_out_on_known_families(recipe):
    """Issue 15: trained without a family, the probe scores >= 0.80 on it, for each family the
    model knows."""
    by = recipe.best["lofo"]["by_family"]
    assert min(by[f] for f in KNOWN) >= 0.80, (by, recipe.picks)


def test_leave_one_family_out_is_measured_and_never_backwards(recipe):
    """What the recipe does achieve held out by topic family (measured 2026-12-01: mean 0.69,
    every family above chance); a regression guard until the 0.80 bar above is met."""
    by = recipe.best["lofo"]["by_family"]
    assert set(by) == set(KNOWN)
    assert min(by.values()) > 0.5 and recipe.best["lofo"]["auroc"] >= 0.65, (by, recipe.picks)


def test_report_shows_both_picks_and_the_operating_point(recipe, report):
    assert set(recipe.picks) == {"val", "lofo"} and recipe.select == "lofo"
    assert (recipe.best["layer"], recipe.best["method"]) == (recipe.picks["lofo"]["layer"], recipe.picks["lofo"]["method"])
    assert report.n_control == 16 and set(report.thresholds) == {"pos", "neg"}
    assert {r["dataset"] for r in report.rows} == {"truthfulness", "negations", "arithmetic"}
    for r in report.rows:
        assert 0 <= r["neg_at_fpr"] <= 1 and 0 <= r["pos_at_fpr"] <= 1
