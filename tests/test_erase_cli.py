"""``steerlens erase run``: a tiny-model run writes the report and the erasers; bad specs and an
occupied ``--out`` are refused with one ``error:`` line naming the field, before any model loads."""

import json

import pytest
from test_erasure import datasets  # noqa: F401  (the module fixture: a concept and a control dataset)
from typer.testing import CliRunner

import steer
from steerlens.app.cli import app
from steerlens.models import cache_dir

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_dir(tiny):
    return str(cache_dir() / "tiny" / tiny.cfg.model_name)


def test_erase_run_writes_report_and_erasers(tiny_dir, datasets, tmp_path):  # noqa: F811
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"dataset": datasets[0], "control": datasets[1], "methods": ["leace", "leace_family"],
                                "layer": 1, "C": 0.1, "max_new_tokens": 2, "prompts": ["the cat"]}))
    out = tmp_path / "run"
    res = runner.invoke(app, ["erase", "run", str(spec), "--out", str(out), "--model", tiny_dir, "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert [r["method"] for r in summary["summary"]] == ["leace", "leace_family"]
    assert (out / "report.html").is_file() and json.loads((out / "report.json").read_text())["spec"]["layer"] == 1
    eraser = steer.ConceptEraser.load(out / "leace_family.eraser.safetensors")
    assert eraser.layers == [1]
    # the same --out again: refused, nothing replaced
    before = (out / "report.json").read_bytes()
    res = runner.invoke(app, ["erase", "run", str(spec), "--out", str(out), "--model", tiny_dir])
    assert res.exit_code == 2 and "already exists and is not an empty directory" in res.output
    assert (out / "report.json").read_bytes() == before


@pytest.mark.parametrize("body, message", [
    ({"dataset": "truthfulness", "layerz": 3}, "unknown erasure spec keys ['layerz']"),
    ({"methods": ["leace", "nope"]}, "methods[1] = 'nope' is not allowed"),
    ({"layer": "six"}, "layer = 'six' is not allowed"),
    ([1, 2], "an erasure spec must be an object"),
])
def test_erase_run_bad_specs(tmp_path, body, message):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(body))
    res = runner.invoke(app, ["erase", "run", str(spec), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "o").exists()


def test_erase_run_missing_and_override_errors(tmp_path, tiny_dir, datasets):  # noqa: F811
    res = runner.invoke(app, ["erase", "run", str(tmp_path / "missing.json")])
    assert res.exit_code == 2 and "erasure spec not found" in res.output
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"dataset": datasets[0], "control": None}))
    res = runner.invoke(app, ["erase", "run", str(spec), "--layer", "9", "--model", tiny_dir, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "layer = 9 is out of range for a model with 3 layers" in res.output
    res = runner.invoke(app, ["erase", "run", str(spec), "--methods", "leace,bogus", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "methods[1] = 'bogus'" in res.output
