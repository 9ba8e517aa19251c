"""`steerlens probe` on the tiny model: writes report.html, report.json and probe.safetensors."""

import json

from typer.testing import CliRunner

import steerlens
from probes import load_probe
from steerlens.app.cli import app
from steerlens.models import cache_dir


def test_probe_command_writes_report(tmp_path):
    model = steerlens.tiny_model(n_layers=2, d_model=64, seed=0)
    path = cache_dir() / "tiny" / model.cfg.model_name  # the HF directory tiny_model booted from
    out = tmp_path / "rep"
    res = CliRunner().invoke(app, ["probe", "--dataset", "truthfulness", "--hook", "resid_post", "--model", str(path),
                                   "--out", str(out), "--limit", "120", "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["best"]["layer"] in (0, 1) and 0 <= summary["test"]["auroc"] <= 1
    assert summary["out"] == {"html": str(out / "report.html"), "json": str(out / "report.json"),
                              "probe": str(out / "probe.safetensors")}
    assert sorted(p.name for p in out.iterdir()) == ["probe.safetensors", "report.html", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert report["sweep"]["info"]["dataset"] == "truthfulness" and len(report["sweep"]["records"]) == 6
    probe = load_probe(out / "probe.safetensors", model=model)
    assert probe.meta_["dataset_hash"] == steerlens.data.digest("truthfulness")
    assert "plotly" in (out / "report.html").read_text()


def test_probe_command_rejects_unlabelled_data(tmp_path):
    res = CliRunner().invoke(app, ["probe", "--dataset", "facts", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and res.stderr.startswith("error: ") and "facts" in res.stderr
    assert "Traceback" not in res.output


def test_probe_command_truth_recipe(tmp_path):
    """``--dataset truth``: affirmations + negations, leave-one-family-out selection, and the
    transfer table with the neutral-text operating point in the report."""
    model = steerlens.tiny_model(n_layers=2, d_model=64, seed=0)
    path = cache_dir() / "tiny" / model.cfg.model_name
    out = tmp_path / "truth"
    res = CliRunner().invoke(app, ["probe", "--dataset", "truth", "--model", str(path), "--out", str(out),
                                   "--methods", "logistic", "--by", "none", "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["select"] == "lofo" and set(summary["picks"]) == {"val", "lofo"}
    assert summary["best"]["layer"] == summary["picks"]["lofo"]["layer"]
    t = summary["transfer"]
    assert {r["dataset"] for r in t["rows"]} == {"truthfulness", "negations", "arithmetic"} and t["n_control"] == 16
    report = json.loads((out / "report.json").read_text())
    assert report["sweep"]["info"]["n"] == 1744 and report["sweep"]["info"]["lofo"] == "family"
    assert "neutral FPR" in (out / "report.html").read_text()
    bad = CliRunner().invoke(app, ["probe", "--dataset", "truthfulness", "--select", "lofo", "--model", str(path),
                                   "--out", str(tmp_path / "x"), "--no-progress"])
    assert bad.exit_code == 2 and "--select" in bad.stderr
