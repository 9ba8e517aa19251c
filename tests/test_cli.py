import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from steerlens.activations import Activations
from steerlens.app.cli import app
from steerlens.io import write_jsonl
from steerlens.models import cache_dir

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_dir(tiny):
    return str(cache_dir() / "tiny" / tiny.cfg.model_name)


def test_help_does_not_import_torch():
    code = "import sys; from steerlens.app.cli import app; assert 'torch' not in sys.modules, 'torch imported'"
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


def test_capture_overwrite(tiny_dir, tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"text": "hello", "label": 1}, {"text": "bye", "label": 0}])
    out = tmp_path / "acts"
    args = ["capture", "--model", tiny_dir, "--jsonl", str(tmp_path / "in.jsonl"), "--layers", "0", "--out", str(out),
            "--no-progress"]
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, args)  # stderr also has the model's loading bar
    assert again.exit_code == 2 and again.stderr.splitlines()[-1].startswith("error: ") and "--overwrite" in again.stderr
    assert runner.invoke(app, [*args, "--limit", "1", "--overwrite"]).exit_code == 0
    assert len(Activations.load(out)) == 1


def test_user_errors_are_one_line_on_stderr_with_exit_2(tiny_dir, tmp_path):
    weights = str(cache_dir() / "tiny" / tiny_dir.split("/")[-1] / "model.safetensors")  # HF weights, not a vector
    cases = [
        (["edit", "run", str(tmp_path / "missing.jsonl")], "experiment file not found"),  # FileNotFoundError
        (["steer", "generate", "hi", "--vector", weights, "--model", tiny_dir], "not a readable steerlens steering vector"),
        (["capture", "--out", str(tmp_path / "x")], "exactly one of --dataset or --jsonl"),  # typer.BadParameter
        (["capture", "--out", str(tmp_path / "x"), "--batch-size", "many"], "'--batch-size'"),
    ]
    for args, match in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (args, res.output)
        assert res.stderr.startswith("error: ") and match in res.stderr and "Traceback" not in res.output, res.output
        assert len(res.stderr.strip().splitlines()) == 1
    res = runner.invoke(app, ["--debug", "edit", "run", str(tmp_path / "missing.jsonl")])
    assert res.exit_code == 1 and isinstance(res.exception, FileNotFoundError)  # the traceback is shown


def test_unexpected_errors_keep_the_traceback(monkeypatch):
    from steerlens import data

    def broken():
        raise RuntimeError("a bug")

    monkeypatch.setattr(data, "names", broken)
    res = runner.invoke(app, ["datasets"])
    assert res.exit_code == 1 and isinstance(res.exception, RuntimeError)


def test_console_errors_without_and_with_debug(tmp_path):
    cmd = [sys.executable, "-m", "steerlens.app.cli", "edit", "run", str(tmp_path / "missing.jsonl")]
    plain = subprocess.run(cmd, capture_output=True, text=True)
    assert plain.returncode == 2 and plain.stderr == f"error: experiment file not found: {tmp_path / 'missing.jsonl'}\n"
    debug = subprocess.run([*cmd[:3], "--debug", *cmd[3:]], capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "FileNotFoundError" in debug.stderr


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
