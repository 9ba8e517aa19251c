"""Layer sweeps, controls, generalisation, plots and reports on synthetic activations."""

import json

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

import probes
from probes import generalization_matrix, sweep_layers, write_report
from probes.plots import generalization_heatmap, layer_curves, projection, score_histogram
from steerlens.activations import Activations


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(limits=1):
        yield


def synthetic(n=240, d=24, signal=(0.0, 0.5, 4.0, 1.5), seed=0, families=("a", "b")):
    """Pairs (one row per label) sharing a group; layer L separates the labels by signal[L] along
    a common direction."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(d)
    w /= np.linalg.norm(w)
    y = np.tile([0, 1], n // 2)
    groups = np.repeat(np.arange(n // 2), 2)
    base = np.repeat(rng.standard_normal((n // 2, d)), 2, axis=0)  # pair-shared content
    tensors = {}
    for layer, s in enumerate(signal):
        X = base + rng.standard_normal((n, d)) + np.outer(y - 0.5, w) * s
        tensors[f"blocks.{layer}.hook_resid_post"] = torch.tensor(X, dtype=torch.float32)
    rows = [{"prompt": f"p{i}", "label": int(y[i]), "group": f"g{groups[i]}", "family": families[groups[i] % len(families)]}
            for i in range(n)]
    info = {"model": "synthetic", "fingerprint": "0" * 16}
    return Activations(tensors, rows, lengths=[1] * n, pool="last", info=info)


@pytest.fixture(scope="module")
def result():
    with threadpool_limits(limits=1):
        return sweep_layers(synthetic(), seed=0, n_boot=200, dataset="synthetic")


def test_sweep_structure_and_best_on_validation(result):
    assert result.layers == (0, 1, 2, 3) and result.methods == ("logistic", "mean_diff", "lda")
    assert len(result.records) == 12
    best = max(result.records, key=lambda r: (r["val"]["auroc"], -r["val"]["log_loss"]))
    assert (result.best["layer"], result.best["method"]) == (best["layer"], best["method"])
    assert result.best["layer"] == 2 and result.best["test"]["auroc"] > 0.9
    assert result.best["test"] == best["test"]
    for r in result.records:
        lo, hi = r["test"]["auroc_ci"]
        assert lo <= r["test"]["auroc"] <= hi
        assert {"accuracy", "auroc", "tpr_at_1pct_fpr", "ece"} <= set(r["test"]) and "auroc" in r["val"]
        assert r["control"]["shuffle_auroc"] < 0.7 and 0.5 <= r["control"]["random_auroc"] < 0.8
        assert r["selectivity"]["shuffle"] == pytest.approx(r["test"]["auroc"] - r["control"]["shuffle_auroc"])
    assert result.curve("auroc", method="logistic")[0] < 0.7  # no signal at layer 0
    json.dumps(result.to_dict())  # JSON-ready


def test_split_is_grouped_and_probe_fitted_on_train_only(result):
    acts = synthetic()
    groups = np.array([r["group"] for r in acts.rows])
    tr, va, te = (result.split[k] for k in ("train", "val", "test"))
    assert not set(groups[tr]) & set(groups[te]) and not set(groups[tr]) & set(groups[va])
    assert not set(groups[va]) & set(groups[te])
    X = acts[result.best["hook"]].numpy()
    np.testing.assert_allclose(result.probe.mean_, X[tr].mean(0), rtol=1e-5, atol=1e-5)
    meta = result.probe.meta_
    assert meta["layer"] == 2 and meta["hook"] == "blocks.2.hook_resid_post" and meta["fingerprint"] == "0" * 16
    assert meta["dataset"] == "synthetic" and len(meta["dataset_hash"]) == 16
    # every probe records the pooling it was fitted on (the activations' own, not their info's)
    assert meta["pool"] == "last" and result.info["pool"] == "last"
    assert all(p.meta_["pool"] == "last" for p in result.fitted.values())
    np.testing.assert_allclose(result.test_scores, result.probe.decision_function(X[te]))


def test_sweep_is_seeded():
    def numbers(r):
        return [{k: v for k, v in rec.items() if not k.endswith("_s")} for rec in r.records]  # drop timings

    a = sweep_layers(synthetic(), methods=["mean_diff"], seed=1, n_boot=100)
    b = sweep_layers(synthetic(), methods=["mean_diff"], seed=1, n_boot=100)
    assert numbers(a) == numbers(b)
    c = sweep_layers(synthetic(), methods=["mean_diff"], seed=2, n_boot=100)
    assert numbers(c) != numbers(a)


def test_sweep_accepts_mapping_and_explicit_labels():
    acts = synthetic()
    tensors = {h: acts[h] for h in acts.hooks}
    r = sweep_layers(tensors, labels=acts.labels, groups=[x["group"] for x in acts.rows], methods=["lda"], layers=[1, 2],
                     controls=False, n_boot=0)
    assert r.layers == (1, 2) and r.records[0]["control"] == {}


def test_sweep_bad_input():
    acts = synthetic(n=40)
    with pytest.raises(ValueError, match="two classes"):
        sweep_layers(acts, labels=np.ones(40))
    with pytest.raises(ValueError, match="40 rows"):
        sweep_layers(acts, labels=np.arange(30) % 2)
    bad = {h: acts[h].clone() for h in acts.hooks}
    bad["blocks.3.hook_resid_post"][5, 1] = float("nan")
    with pytest.raises(ValueError, match="blocks.3.hook_resid_post.*NaN"):
        sweep_layers(bad, labels=acts.labels)
    with pytest.raises(ValueError, match="empty"):
        sweep_layers({h: acts[h][:0] for h in acts.hooks}, labels=[])
    with pytest.raises(ValueError, match="empty"):
        sweep_layers({}, labels=[])
    with pytest.raises(ValueError, match="method must be"):
        sweep_layers(acts, methods=["svm"])
    with pytest.raises(ValueError, match="no captured hook"):
        sweep_layers(acts, hook="mlp_out")
    with pytest.raises(ValueError, match="labels"):
        sweep_layers({h: acts[h] for h in acts.hooks})
    with pytest.raises(ValueError, match="one row per example"):
        sweep_layers(Activations({"blocks.0.hook_resid_post": torch.zeros(4, 3)}, [{}, {}], lengths=[2, 2], pool="all"))


def test_generalization_matrix():
    acts = synthetic(n=400, families=("a", "b", "c"))
    gen = generalization_matrix(acts, by="family", layer=2, seed=0)
    assert gen.domains == ("a", "b", "c") and gen.auroc.shape == (3, 3)
    assert gen.off_diagonal().min() > 0.85  # one shared direction: transfer works
    json.dumps(gen.to_dict())
    # domains with unrelated directions: transfer fails, in-domain works
    rng = np.random.default_rng(0)
    domains = {}
    for k in range(2):
        y = np.tile([0, 1], 100)
        w = np.zeros(20)
        w[k] = 4.0
        domains[f"d{k}"] = (rng.standard_normal((200, 20)) + np.outer(y - 0.5, w), y)
    g2 = generalization_matrix(domains, method="mean_diff")
    assert np.diag(g2.auroc).min() > 0.9 and abs(g2.off_diagonal() - 0.5).max() < 0.15
    with pytest.raises(ValueError, match="layer="):
        generalization_matrix(acts, by="family")
    with pytest.raises(ValueError, match="'topic' field"):
        generalization_matrix(acts, by="topic", layer=2)
    with pytest.raises(ValueError, match="two domains"), pytest.warns(UserWarning, match="dropping domain"):
        generalization_matrix(acts, by="label", layer=2)  # one domain per class: nothing to learn


def test_plots_and_report(result, tmp_path):
    acts = synthetic()
    for fig in (layer_curves(result), score_histogram(result), projection(acts.at(2), acts.labels, result.probe),
                projection(acts.at(2), acts.labels)):
        assert len(fig.data) >= 2
    gen = generalization_matrix(acts, by="family", layer=2)
    assert generalization_heatmap(gen).data[0].z.shape == (2, 2)
    path = write_report(result, tmp_path / "rep", generalization=gen, acts=acts)
    assert path == tmp_path / "rep" / "report.html"
    page = path.read_text()
    assert page.count("plotly.js v") == 1 and "<script src=\"http" not in page  # plotly inlined once, no CDN
    assert page.count('class="plotly-graph-div"') == 4
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert data["sweep"]["best"]["layer"] == 2 and data["generalization"]["domains"] == ["a", "b"]
    assert data["probe_file"] == "probe.safetensors"
    loaded = probes.load_probe(tmp_path / "rep" / "probe.safetensors")
    np.testing.assert_allclose(loaded.coef_, result.probe.coef_)
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["probe.safetensors", "report.html", "report.json"]
    with pytest.raises(TypeError, match="result first"):
        write_report(tmp_path / "rep", result)  # the old argument order


def family_specific(n=360, d=24, seed=0, families=("a", "b", "c")):
    """Layer 0: one weak direction shared by every family; layer 1: a strong direction of each
    family's own. Validation (in-distribution) prefers layer 1; holding a family out, only
    layer 0's shared direction transfers."""
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], n // 2)
    groups = np.repeat(np.arange(n // 2), 2)
    fam = np.array([families[g % len(families)] for g in groups])
    shared = np.eye(d)[0]
    own = {f: np.eye(d)[1 + k] for k, f in enumerate(families)}
    X0 = rng.standard_normal((n, d)) + np.outer(y - 0.5, shared) * 2.0
    X1 = rng.standard_normal((n, d)) + np.stack([own[f] for f in fam]) * (y - 0.5)[:, None] * 6.0
    tensors = {"blocks.0.hook_resid_post": torch.tensor(X0, dtype=torch.float32),
               "blocks.1.hook_resid_post": torch.tensor(X1, dtype=torch.float32)}
    rows = [{"prompt": f"p{i}", "label": int(y[i]), "group": f"g{groups[i]}", "family": str(fam[i])} for i in range(n)]
    return Activations(tensors, rows, lengths=[1] * n, pool="last", info={"model": "synthetic"})


def test_leave_one_family_out_selection_rewards_transfer():
    acts = family_specific()
    by_val = sweep_layers(acts, methods=["logistic"], seed=0, n_boot=0, controls=False, lofo="family")
    by_lofo = sweep_layers(acts, methods=["logistic"], seed=0, n_boot=0, controls=False, lofo="family", select="lofo")
    # both criteria are computed and shown either way; each picks its own layer
    assert by_val.picks["val"]["layer"] == by_lofo.picks["val"]["layer"] == 1
    assert by_val.picks["lofo"]["layer"] == by_lofo.picks["lofo"]["layer"] == 0
    assert by_val.best["layer"] == 1 and by_lofo.best["layer"] == 0 and by_lofo.probe.meta_["layer"] == 0
    assert by_lofo.best_for("logistic")["layer"] == 0 and by_lofo.best_for("logistic", "val")["layer"] == 1
    rec = {r["layer"]: r for r in by_lofo.records}
    assert set(rec[0]["lofo"]["by_family"]) == {"a", "b", "c"}
    assert rec[0]["lofo"]["min"] > 0.75 and rec[1]["lofo"]["auroc"] < 0.72  # layer 1 transfers far less
    assert rec[0]["lofo"]["auroc"] == pytest.approx(np.mean(list(rec[0]["lofo"]["by_family"].values())))
    assert by_lofo.select == "lofo" and by_lofo.info["lofo"] == "family"
    assert json.loads(json.dumps(by_lofo.to_dict()))["picks"]["lofo"]["layer"] == 0
    assert "lofo" not in by_val.records[0] or by_val.records[0]["lofo"]  # computed whenever lofo= is given


def test_leave_one_family_out_never_reads_the_test_split(monkeypatch):
    """The held-out family is scored on its training + validation rows only, with a probe
    fitted on the other families' training rows."""
    import probes.sweep as S

    acts = family_specific()
    seen = []
    real = S._lofo

    def spy(probe, X, y, g, fam, tr, va):
        seen.append((set(tr.tolist()), set(va.tolist())))
        return real(probe, X, y, g, fam, tr, va)

    monkeypatch.setattr(S, "_lofo", spy)
    res = sweep_layers(acts, methods=["mean_diff"], seed=0, n_boot=0, controls=False, lofo="family")
    te = set(res.split["test"].tolist())
    assert seen and all(not (tr | va) & te for tr, va in seen)


def test_leave_one_family_out_bad_input():
    acts = family_specific(n=120)
    with pytest.raises(ValueError, match="select='lofo' needs lofo"):
        sweep_layers(acts, select="lofo")
    with pytest.raises(ValueError, match="select must be"):
        sweep_layers(acts, select="test")
    with pytest.raises(ValueError, match="'topic' field"):
        sweep_layers(acts, lofo="topic")
    with pytest.raises(ValueError, match="one family only"):
        sweep_layers(synthetic(n=40, families=("a",)), lofo="family")
    res = sweep_layers(acts, methods=["mean_diff"], n_boot=0, controls=False)
    assert set(res.picks) == {"val"}
    with pytest.raises(ValueError, match="lofo="):
        res.best_for("mean_diff", "lofo")


def test_report_shows_both_layer_choices(tmp_path):
    acts = family_specific()
    res = sweep_layers(acts, methods=["logistic"], seed=0, n_boot=0, controls=False, lofo="family", select="lofo")
    page = write_report(res, tmp_path / "rep").read_text()
    assert "leave-one-family-out" in page and "LOFO AUROC (mean)" in page
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert data["sweep"]["picks"]["val"]["layer"] == 1 and data["sweep"]["picks"]["lofo"]["layer"] == 0
