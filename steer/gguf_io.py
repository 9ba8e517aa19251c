"""GGUF control vectors: export for llama.cpp, import from llama.cpp / repeng / steerlens files.

Format (llama.cpp ``common_control_vector_load_one``, repeng ``ControlVector.export_gguf``):
``general.architecture = "controlvector"``, ``controlvector.model_hint`` (the HF ``model_type``),
``controlvector.layer_count`` (the number of directions, as repeng writes it) and one 1-D F32
tensor ``direction.N`` per steered layer.

Layer mapping, the off-by-one the tools get wrong::

    llama.cpp direction.N == steerlens layer N == transformer-lens blocks.N.hook_resid_post
                          == HF hidden_states[N + 1] == repeng directions[N]

llama.cpp stores ``direction.N`` at offset ``n_embd·(N−1)`` of its buffer and reads layer ``il``
from offset ``n_embd·(il−1)``, adding it to the output of block ``il``: the two −1s cancel and
``direction.N`` is added to block N's output. It rejects ``direction.0`` (the buffer starts at
layer 1), so block 0 cannot be steered from a GGUF and ``export_gguf`` refuses it. llama.cpp
only adds: scale at load time with ``--control-vector-scaled v.gguf COEFF``.

steerlens' own metadata travels in ``steerlens.metadata`` (JSON; llama.cpp ignores unknown
keys), so ``import_gguf(export_gguf(v))`` gives back the same vector.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from steer.vector import SteeringVector

ARCH = "controlvector"
_META_KEY = "steerlens.metadata"


def export_gguf(vector: SteeringVector, path: str | os.PathLike, *, model_hint: str | None = None) -> Path:
    """Write ``vector`` as a llama.cpp control vector (written atomically).

    ``model_hint`` defaults to the HF ``model_type`` recorded at compute time, else the model name.
    Raises ``ValueError`` for a vector at layer 0 or on a hook other than ``resid_post``.
    """
    import gguf

    from steerlens.io import atomic_path

    if vector.hook != "resid_post":
        raise ValueError(f"llama.cpp control vectors act on each block's output (resid_post); "
                         f"this vector acts on {vector.hook!r}")
    if 0 in vector.layers:
        raise ValueError("llama.cpp cannot steer block 0 (its loader rejects direction.0; the "
                         "control-vector buffer starts at layer 1). Drop layer 0, e.g. "
                         f"vector.select({[layer for layer in vector.layers if layer != 0] or '[...]'})")
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
    return path


def import_gguf(path: str | os.PathLike) -> SteeringVector:
    """Read a control-vector GGUF (steerlens, llama.cpp's cvector-generator or repeng).

    Files without steerlens metadata carry no fingerprint: loading them onto a model checks the
    width and layers only. ``info["model_hint"]`` keeps the file's hint.
    """
    import gguf

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
    raw = _string(reader, _META_KEY)
    if raw is not None:
        return SteeringVector.from_metadata(directions, json.loads(raw))
    return SteeringVector(directions, method="gguf", model_name=hint, info={"model_hint": hint, "source": str(path.name)})


def _string(reader, key: str) -> str | None:
    field = reader.get_field(key)
    if field is None or not field.types:
        return None
    value = field.contents()
    return value if isinstance(value, str) else None
