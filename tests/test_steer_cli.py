"""`steerlens steer ...` end to end on the tiny model (booted from its checkpoint directory)."""

import json

import pytest
import torch
from typer.testing import CliRunner

import steer
from steer.vector import SteeringVector
from steerlens.app.cli import app
from steerlens.models import cache_dir


@pytest.fixture(scope="module")
def model_dir(tiny):
    path = cache_dir() / "tiny" / tiny.cfg.model_name
    assert (path / "config.json").is_file()
    return str(path)


def run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


def payload(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout[result.stdout.index("{"):])


def test_steer_cli_flow(model_dir, tmp_path):
    pytest.importorskip("steerlens.data")
    vec = tmp_path / "v.safetensors"
    out = payload(run("steer", "compute", "--dataset", "sentiment", "--layers", "1", "--out", vec,
                      "--model", model_dir, "--batch-size", "64"))
    assert out["layers"] == [1]
    v = SteeringVector.load(vec)
    assert v.dataset == "sentiment" and v.method == "mean_diff" and v.coeff is None
    every = payload(run("steer", "compute", "--out", tmp_path / "every.safetensors", "--model", model_dir,
                        "--batch-size", "64"))
    assert every["layers"] == [0, 1, 2]  # the default recipe: every layer of the 3-layer tiny model

    cal = payload(run("steer", "calibrate", vec, "--kl-budget", "0.01", "--model", model_dir))
    assert SteeringVector.load(vec).coeff == cal["coeff"] and cal["kl"] <= 0.01

    gen = run("steer", "generate", "hello", "the cat", "--vector", vec, "--coeff", "2", "--max-new-tokens", "4",
              "--compare", "--model", model_dir)
    assert gen.exit_code == 0, gen.output
    lines = gen.stdout.strip().splitlines()
    assert lines[0].startswith("hello") and "(unsteered) hello" in lines[1] and lines[2].startswith("the cat")

    rep = tmp_path / "rep"
    res = payload(run("steer", "sweep", "--vector", vec, "--coeffs", "0,2", "--out", rep, "--behaviour", "none",
                      "-p", "hello", "-p", "once", "--max-new-tokens", "3", "--no-progress", "--model", model_dir))
    assert [p["coeff"] for p in res["points"]] == [0.0, 2.0, 0.0, 2.0]
    assert (rep / "report.html").is_file() and (rep / "report.json").is_file()

    gguf_path = tmp_path / "v.gguf"
    payload(run("steer", "export-gguf", vec, gguf_path))
    back = tmp_path / "back.safetensors"
    payload(run("steer", "import-gguf", gguf_path, back))
    assert torch.equal(SteeringVector.load(back)[1], v[1])


def test_steer_cli_probe_sweep(model_dir, tmp_path):
    try:
        from probes import LogisticProbe  # noqa: F401
    except ImportError:
        pytest.skip("the probes package does not export LogisticProbe yet")

    vec = tmp_path / "v.safetensors"
    payload(run("steer", "compute", "--layers", "2", "--out", vec, "--model", model_dir, "--batch-size", "64"))
    res = payload(run("steer", "sweep", "--vector", vec, "--coeffs", "0,4", "--out", tmp_path / "rep",
                      "-p", "hello", "--max-new-tokens", "3", "--no-control", "--no-progress", "--model", model_dir))
    assert all(0 <= p["behaviour"] <= 1 for p in res["points"])


def test_steer_cli_errors(model_dir, tmp_path):
    v0 = tmp_path / "v0.safetensors"
    SteeringVector({0: torch.ones(64)}).save(v0)
    bad = run("steer", "export-gguf", v0, tmp_path / "v0.gguf")
    assert bad.exit_code == 2 and bad.stderr.startswith("error: ") and "block 0" in bad.stderr
    assert "--drop-layer-0" in bad.stderr and not (tmp_path / "v0.gguf").exists()
    only0 = run("steer", "export-gguf", v0, tmp_path / "v0.gguf", "--drop-layer-0")
    assert only0.exit_code == 2 and "nothing is left" in only0.stderr
    v01 = tmp_path / "v01.safetensors"
    SteeringVector({0: torch.ones(64), 1: 2 * torch.ones(64)}).save(v01)
    dropped = payload(run("steer", "export-gguf", v01, tmp_path / "v01.gguf", "--drop-layer-0"))
    back = steer.import_gguf(tmp_path / "v01.gguf")
    assert dropped["layers"] == [1] and back.layers == [1] and torch.equal(back[1], 2 * torch.ones(64))
    missing = run("steer", "generate", "hi", "--vector", tmp_path / "nope.safetensors", "--model", model_dir)
    assert missing.exit_code == 2 and missing.stderr.startswith("error: no vector file")
    badpos = run("steer", "generate", "hi", "--vector", v0, "--positions", "middle", "--model", model_dir)
    assert badpos.exit_code == 2 and "--positions" in badpos.stderr.splitlines()[-1]
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(v0.read_bytes()[:40])
    cut = run("steer", "calibrate", trunc, "--model", model_dir)
    assert cut.exit_code == 2 and cut.stderr.startswith(f"error: {trunc} is not a readable steerlens steering vector")
    assert "Traceback" not in cut.output
