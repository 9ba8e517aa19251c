import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from steerlens.activations import Activations
from steerlens.cli import app
from steerlens.io import write_jsonl
from steerlens.models import cache_dir

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_dir(tiny):
    return str(cache_dir() / "tiny" / tiny.cfg.model_name)


def test_help_does_not_import_torch():
    code = "import sys; from steerlens.cli import app; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_info(tiny_dir):
    res = runner.invoke(app, ["info", "--model", tiny_dir, "--json", "--hooks"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert (info["n_layers"], info["d_model"], info["architecture"]) == (3, 64, "GPT2LMHeadModel")
    assert "blocks.2.hook_resid_post" in info["hooks"] and info["cache"] == str(cache_dir())


def test_capture_jsonl(tiny_dir, tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"text": "hello", "label": 1}, {"prompt": "bye now", "label": 0}])
    out = tmp_path / "acts"
    res = runner.invoke(app, ["capture", "--model", tiny_dir, "--jsonl", str(tmp_path / "in.jsonl"),
                              "--hooks", "resid_post,mlp_out", "--layers", "0,2", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    acts = Activations.load(out)
    assert acts.hooks == ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post", "blocks.0.hook_mlp_out", "blocks.2.hook_mlp_out"]
    assert acts.labels.tolist() == [1, 0] and acts.rows[1]["prompt"] == "bye now"


def test_capture_errors(tiny_dir, tmp_path):
    res = runner.invoke(app, ["capture", "--model", tiny_dir, "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "exactly one of --dataset or --jsonl" in res.output
    res = runner.invoke(app, ["capture", "--model", tiny_dir, "--dataset", "sentiment", "--layers", "one",
                              "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "comma-separated ints" in res.output
    assert not (tmp_path / "x").exists()


def test_datasets_command():
    res = runner.invoke(app, ["datasets"])
    assert res.exit_code == 0 and "truthfulness" in res.output and "facts" in res.output


@pytest.mark.gemma
def test_capture_dataset_on_gemma(gemma, tmp_path):
    out = tmp_path / "truth"
    res = runner.invoke(app, ["capture", "--dataset", "truthfulness", "--layers", "6,9", "--limit", "24",
                              "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    acts = Activations.load(out)
    assert len(acts) == 24 and acts["blocks.9.hook_resid_post"].shape == (24, 640)
    assert acts.info["model"] == "gemma-3-270m" and set(acts.labels.tolist()) == {0, 1}
