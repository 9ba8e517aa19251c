"""``steerlens erase run`` on the embedded Gemma 3 270M, as a user runs it (no ``--model``: the
spec's default model), with LEACE and directional ablation at every residual write: the report,
the eraser file with the model's fingerprint, and each method's effect next to its random control.

Cheap by construction: 200 rows per dataset (whole groups, seeded), one erased layer, 4 new tokens."""

import json
import math

import pytest
from typer.testing import CliRunner

import steer
from steerlens.app.cli import app
from steerlens.models import fingerprint

pytestmark = pytest.mark.gemma

LAYER = 6


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("erase_gemma")
    spec = tmp / "spec.json"
    spec.write_text(json.dumps({"methods": ["leace", "ablation"], "layer": LAYER, "limit": 200, "C": 0.1,
                                "max_new_tokens": 4, "prompts": ["The capital of France is"]}))
    out = tmp / "run"
    res = CliRunner().invoke(app, ["erase", "run", str(spec), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.output[res.output.index("{"):])


def test_cli_writes_the_report_and_a_fingerprinted_eraser(run, gemma):
    out, summary = run
    assert [r["method"] for r in summary["summary"]] == ["leace", "ablation"]
    report = json.loads((out / "report.json").read_text())
    assert report["spec"]["layer"] == LAYER and report["spec"]["model"] == "gemma-3-270m"
    assert (out / "report.html").stat().st_size > 10_000
    eraser = steer.ConceptEraser.load(out / "leace.eraser.safetensors")
    assert eraser.layers == [LAYER] and eraser.fingerprint == fingerprint(gemma)
    assert not (out / "ablation.eraser.safetensors").exists()  # a direction, not an eraser


def test_ablation_on_gemma_erases_the_probe_direction_and_reports_its_cost(run):
    out, _ = run
    report = json.loads((out / "report.json").read_text())
    before, m = report["before"], report["methods"]["ablation"]
    layer = str(LAYER)
    print("truth AUROC", before["concept"][layer], "->", m["concept"][layer], "| harmfulness",
          before["control"][layer], "->", m["control"][layer], "| KL", m["kl"], "random KL", m["random"]["kl"],
          "| out of family", m["out_of_family"]["mean"])
    assert before["concept"][layer] > 0.85
    assert m["rank"] == 1 and m["layers"] == list(range(18))  # every residual write of the 18 blocks
    # one direction erased at every write: the re-trained probe loses part of its signal, not all of it
    assert m["concept"][layer] < before["concept"][layer] - 0.02
    assert math.isfinite(m["kl"]) and m["kl"] > 0 and math.isfinite(m["perplexity"])
    assert math.isfinite(m["random"]["kl"]) and m["random"]["rank"] == 1
    assert set(m["out_of_family"]["by_family"]) == {"geography", "science", "opposites", "translation"}
    assert len(m["generations"]) == 1 and isinstance(m["generations"][0], str)
