"""probes.transfer_report on synthetic activations: per-dataset and per-family AUROC on held-out
rows, the "reads it backwards" flag, and the operating point set on control activations."""

import json

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from probes import sweep_layers, transfer_report, write_report
from steerlens.activations import Activations

HOOK = "blocks.0.hook_resid_post"


def acts_for(dataset_signs: dict, n=120, d=16, seed=0, shift=0.0):
    """Rows of several datasets (a ``dataset`` field), two families each; the label moves the
    activations along e₀ by ``sign`` of the dataset (−1: the same direction read backwards)."""
    rng = np.random.default_rng(seed)
    X, rows = [], []
    for k, (name, sign) in enumerate(dataset_signs.items()):
        y = np.tile([0, 1], n // 2)
        x = rng.standard_normal((n, d))
        x[:, 0] += sign * 3.0 * (y - 0.5) + shift
        X.append(x)
        rows += [{"prompt": f"{name}{i}", "label": int(y[i]), "group": f"{name}-{i // 2}", "dataset": name,
                  "family": "f1" if (i // 2) % 2 else "f2"} for i in range(n)]
    X = torch.tensor(np.concatenate(X), dtype=torch.float32)
    return Activations({HOOK: X}, rows, lengths=[1] * len(rows), pool="last", info={"model": "synthetic"})


@pytest.fixture(scope="module")
def swept():
    acts = acts_for({"plain": 1, "negated": 1})
    with threadpool_limits(limits=1):
        return acts, sweep_layers(acts, methods=["logistic"], n_boot=0, controls=False, seed=0)


def test_per_dataset_and_family_on_the_test_split(swept):
    acts, res = swept
    rep = transfer_report(res, acts)
    te = res.split["test"]
    z = res.probe.decision_function(acts[HOOK][te])
    ds = np.array([r["dataset"] for r in acts.rows])[te]
    from probes.metrics import auroc

    assert rep.auroc("plain") == pytest.approx(auroc(acts.labels[te][ds == "plain"], z[ds == "plain"]))
    assert {(r["dataset"], r["family"]) for r in rep.rows} == {(d, f) for d in ("plain", "negated") for f in ("all", "f1", "f2")}
    assert all(r["held_out"] == "test split" for r in rep.rows) and sum(r["n"] for r in rep.rows if r["family"] == "all") == len(te)
    assert rep.backwards == [] and rep.n_control == 0 and "pos_at_fpr" not in rep.rows[0]
    assert rep.layer == 0 and rep.method == "logistic"


def test_a_dataset_read_backwards_is_flagged(swept):
    acts, res = swept
    rep = transfer_report(res, acts, others={"inverted": acts_for({"inverted": -1}, seed=1)})
    assert rep.auroc("inverted") < 0.2
    assert ("inverted", "all") in rep.backwards and ("plain", "all") not in rep.backwards
    assert "**backwards**" in rep.table() and [r["held_out"] for r in rep.rows if r["dataset"] == "inverted"] == ["all rows"] * 3


def test_operating_point_is_set_on_the_control_set(swept):
    acts, res = swept
    rng = np.random.default_rng(5)
    control = torch.tensor(rng.standard_normal((250, 16)), dtype=torch.float32)  # neither class
    rep = transfer_report(res, acts, control=control, fpr=0.01)
    c = np.sort(res.probe.decision_function(control))
    # k = floor(0.01 * 250) = 2 control rows may score beyond each threshold
    assert rep.thresholds == {"pos": pytest.approx(c[-3]), "neg": pytest.approx(c[2])}
    assert (c > rep.thresholds["pos"]).sum() == 2 and (c < rep.thresholds["neg"]).sum() == 2
    te = res.split["test"]
    z, y = res.probe.decision_function(acts[HOOK][te]), acts.labels[te]
    ds = np.array([r["dataset"] for r in acts.rows])[te] == "plain"
    row = next(r for r in rep.rows if r["dataset"] == "plain" and r["family"] == "all")
    assert row["pos_at_fpr"] == pytest.approx(np.mean(z[ds & (y == 1)] > c[-3]))
    assert row["neg_at_fpr"] == pytest.approx(np.mean(z[ds & (y == 0)] < c[2]))
    # with fewer than 1/fpr control rows none may be flagged: beyond the extreme control scores
    few = transfer_report(res, acts, control=control[:16])
    c16 = np.sort(res.probe.decision_function(control[:16]))
    assert few.thresholds == {"pos": pytest.approx(c16[-1]), "neg": pytest.approx(c16[0])} and few.n_control == 16
    # Activations work as a control set, and the report renders and serialises
    ctl_acts = Activations({HOOK: control}, [{"prompt": str(i)} for i in range(250)], lengths=[1] * 250, pool="last")
    assert transfer_report(res, acts, control=ctl_acts).thresholds == rep.thresholds
    json.dumps(rep.to_dict())
    assert "false flagged at 1% neutral FPR" in rep.table()


def test_report_page_has_the_transfer_table(swept, tmp_path):
    acts, res = swept
    rep = transfer_report(res, acts, others={"inverted": acts_for({"inverted": -1}, seed=1)},
                          control=torch.zeros(4, 16))
    page = write_report(res, tmp_path / "r", transfer=rep).read_text()
    assert "reads this family backwards" in page and "neutral FPR" in page
    assert json.loads((tmp_path / "r" / "report.json").read_text())["transfer"]["backwards"][0] == ["inverted", "all"]


def test_bad_input(swept):
    acts, res = swept
    with pytest.raises(ValueError, match="the sweep was fitted on"):
        transfer_report(res, acts_for({"x": 1}, n=40))
    with pytest.raises(ValueError, match="fpr must be"):
        transfer_report(res, acts, fpr=1.5)
    with pytest.raises(ValueError, match="probe's hook"):
        transfer_report(res, acts, control={"blocks.5.hook_resid_post": torch.zeros(3, 16)})
    with pytest.raises(ValueError, match="at least one neutral"):
        transfer_report(res, acts, control=torch.zeros(0, 16))
    other = acts_for({"o": 1}, n=20)
    other.rows[0]["label"] = 7
    with pytest.raises(ValueError, match="outside the probe's classes"):
        transfer_report(res, acts, others={"o": other})


def test_truth_recipe_in_one_call(tiny):
    from probes.transfer import truth_recipe

    result, rep = truth_recipe(tiny, layers=[1], methods=["mean_diff"], n_boot=0, controls=False)
    assert result.info["n"] == 1744 and result.select == "lofo" and result.info["lofo"] == "family"
    assert {r["dataset"] for r in rep.rows} == {"truthfulness", "negations", "arithmetic"} and rep.n_control == 16
    assert rep.layer == 1 and set(rep.picks) == {"val", "lofo"}
