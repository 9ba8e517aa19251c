"""steerlens.artifacts: the one save/load/check layer of vector, eraser, probe and key-statistics files."""

import ast
import re
from pathlib import Path

import pytest
import torch

import steerlens
from steerlens import artifacts
from steerlens.artifacts import Meta
from steerlens.io import load_tensors, save_tensors

FMT = "steerlens.thing"


def meta(**kw):
    return Meta(FMT, 2, **{"hook": "resid_post", "layers": [0, 2], "d_model": 64, "method": "test", **kw})


def saved(tmp_path, **kw):
    tensors = {"layer.0": torch.arange(64.0), "layer.2": torch.ones(64)}
    return artifacts.save(tmp_path / "a.safetensors", tensors, meta(**kw)), tensors


def rewrite(path, **changes):
    t, m = load_tensors(path)
    out = path.with_name("bad.safetensors")
    save_tensors(out, t, {**m, **changes})
    return out


def named(path, match):
    return pytest.raises(ValueError, match=f"{re.escape(str(path))}:? .*{match}")


def test_round_trip(tmp_path):
    m = meta(model_name="m", fingerprint="f" * 16, dataset="toy", dataset_hash="h", info={"k": [1, 2]})
    path = artifacts.save(tmp_path / "a.safetensors", {"w": torch.arange(6.0).reshape(2, 3)}, m)
    tensors, raw = artifacts.load(path, FMT, max_version=2)
    assert Meta.from_dict(raw) == m and raw["version"] == 2 and raw["created"] == m.created
    assert torch.equal(tensors["w"], torch.arange(6.0).reshape(2, 3))
    # extra keys of a format's own travel with the record's
    path = artifacts.save(tmp_path / "b.safetensors", {}, {**m.to_dict(), "coeff": 2.5})
    assert artifacts.load(path, FMT, 2)[1]["coeff"] == 2.5
    with pytest.raises(ValueError, match="'format' and a positive integer 'version'"):
        artifacts.save(tmp_path / "c.safetensors", {}, {"hook": "resid_post"})
    assert not (tmp_path / "c.safetensors").exists()


def test_version_too_new_and_wrong_format(tmp_path):
    path, _ = saved(tmp_path)
    with pytest.raises(ValueError, match=re.escape(f"{path} has format version 2; this steerlens reads <= 1")):
        artifacts.load(path, FMT, max_version=1)
    assert artifacts.load(path, FMT, max_version=3)[1]["version"] == 2  # older files are read
    with pytest.raises(ValueError, match=re.escape(f"{path} is not a steerlens other thing (metadata format "
                                                   f"'steerlens.thing', expected 'steerlens.other_thing')")):
        artifacts.load(path, "steerlens.other_thing", 1)
    with pytest.raises(FileNotFoundError, match="no widget at"):
        artifacts.load(tmp_path / "missing.safetensors", FMT, 1, what="widget")


def test_corrupt_files_name_the_file(tmp_path):
    path, _ = saved(tmp_path)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match=re.escape(f"{cut} is not a readable steerlens thing")):
        artifacts.load(cut, FMT, 2)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 200)
    with pytest.raises(ValueError, match=re.escape(f"{junk} is not a readable steerlens thing")):
        artifacts.load(junk, FMT, 2)
    for change, match in [(dict(layers=[0, "a"]), r"metadata 'layers' must be a non-empty list"),
                          (dict(version="2"), r"metadata 'version' must be a positive integer, got '2'"),
                          (dict(fingerprint=5), r"metadata 'fingerprint' must be a string or null, got 5"),
                          (dict(coeff=10**400), r"metadata 'coeff' must be a number or null, got 1000")]:
        bad = rewrite(path, **change)
        with named(bad, match):
            artifacts.load(bad, FMT, 2, fields={**artifacts.PROVENANCE, "coeff": artifacts.OPT_NUMBER})
    from safetensors.torch import save_file

    deep = tmp_path / "deep.safetensors"
    save_file({"w": torch.zeros(1)}, str(deep), metadata={"format": f'"{FMT}"', "info": "[" * 100_000 + "]" * 100_000})
    with pytest.raises(ValueError, match=re.escape(f"{deep} is not a readable steerlens thing: ") + ".*nested too deeply"):
        artifacts.load(deep, FMT, 2)
    with named(path, r"the thing metadata lacks \['coeff'\]"):
        artifacts.load(path, FMT, 2, required=("coeff",))
    tensors, _ = artifacts.load(path, FMT, 2)
    with named(path, r"missing \['layer.1'\], unexpected \['layer.2'\]"):
        artifacts.check_tensors(path, tensors, {"layer.0": (64,), "layer.1": (64,)}, "layers [0, 1]")
    with named(path, r"tensor 'layer.2' has shape \(64,\), but d 32 needs \(32,\)"):
        artifacts.check_tensors(path, tensors, {"layer.0": (None,), "layer.2": (32,)}, "d 32")
    with named(path, "bad value"):
        with artifacts.naming(path):
            raise TypeError("bad value")


def test_fingerprint_mismatch_and_force(tiny):
    fp = steerlens.fingerprint(tiny)
    artifacts.check_compatible(tiny, meta(fingerprint=fp), "thing")
    artifacts.check_compatible(tiny, meta(), "thing")  # no fingerprint recorded: width and layers only
    other = meta(model_name="elsewhere", fingerprint="0" * 16)
    with pytest.raises(ValueError, match=r"the thing was computed on 'elsewhere' \(fingerprint 0{16}\).*"
                                         rf"\(fingerprint {fp}\)\. Pass force=True"):
        artifacts.check_compatible(tiny, other, "thing")
    with pytest.warns(UserWarning, match="used anyway"):
        artifacts.check_compatible(tiny, other, "thing", force=True)


def test_width_and_layers(tiny):
    narrow = meta(d_model=32, fingerprint="0" * 16)
    for force in (False, True):  # force never fixes a width
        with pytest.raises(ValueError, match=r"the thing has width 32 \(it does not match d_model 64 of .* at 'resid_post'\)"):
            artifacts.check_compatible(tiny, narrow, "thing", force=force)
    d_mlp = int(tiny.cfg.d_mlp)
    artifacts.check_compatible(tiny, meta(hook="blocks.1.mlp.hook_post", d_model=d_mlp), "thing")
    with pytest.raises(ValueError, match=f"does not match d_mlp {d_mlp}"):
        artifacts.check_compatible(tiny, meta(hook="blocks.1.mlp.hook_post"), "thing")
    artifacts.check_compatible(tiny, meta(hook="blocks.0.attn.hook_z", d_model=5), "thing")  # width unknown: unchecked
    with pytest.raises(ValueError, match=r"the thing has layers \[3, 7\], but the model has 3 layers \(0..2\)"):
        artifacts.check_compatible(tiny, meta(layers=[1, 3, 7]), "thing", force=True)
    assert artifacts.hook_width(tiny, "blocks.2.hook_resid_pre") == 64 and artifacts.hook_width(tiny, "z") is None


def test_core_imports_nothing_above_it():
    """DESIGN: the core artifact layer imports torch, the stdlib and steerlens core only."""
    tree = ast.parse(Path(artifacts.__file__).read_text())
    roots = {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    roots |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not roots & {"probes", "steer", "editing"}, roots
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("steerlens")}
    assert modules <= {"steerlens.io", "steerlens.models", "steerlens.hooks"}, modules
