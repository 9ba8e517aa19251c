"""The served steering vectors and probes, by name: loaded from directories at start-up,
registered and deleted at run time, every one checked against the served model."""

from __future__ import annotations

import base64
import binascii
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from steer.vector import SteeringVector

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


class RegistryError(ValueError):
    """A bad name, file or vector; ``status`` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


def check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise RegistryError(f"{what} name must be 1-64 characters of letters, digits, '_', '.' or '-' "
                            f"starting with a letter or digit, got {name!r}", param="name")
    return name


def vector_info(name: str, v: SteeringVector) -> dict[str, Any]:
    return {"id": name, "object": "steering.vector", "layers": v.layers, "width": v.d_model, "hook": v.hook,
            "coeff": v.coeff, "method": v.method, "model": v.model_name, "fingerprint": v.fingerprint,
            "dataset": v.dataset, "created": v.created}


def probe_info(name: str, hook: str, probe: Any) -> dict[str, Any]:
    meta = getattr(probe, "meta_", None) or {}
    return {"id": name, "object": "probe", "hook": hook, "layer": meta.get("layer"),
            "width": int(probe.coef_.shape[1]), "method": meta.get("method"),
            "classes": [c.item() if hasattr(c, "item") else c for c in probe.classes_],
            "model": meta.get("model"), "fingerprint": meta.get("fingerprint"), "dataset": meta.get("dataset"),
            "metrics": meta.get("metrics"), "created": meta.get("created")}


class Registry:
    """Thread-safe ``{name: SteeringVector}`` and ``{name: (hook, probe)}`` for one model."""

    def __init__(self, model: "TransformerBridge"):
        self.model = model
        self._lock = threading.Lock()
        self.vectors: dict[str, SteeringVector] = {}
        self.probes: dict[str, tuple[str, Any]] = {}

    # -- loading ---------------------------------------------------------------------------------
    def load_dir(self, path: str | os.PathLike, kind: str) -> list[str]:
        """Register every ``*.safetensors`` file in ``path`` by file name (``kind``: ``"vectors"``
        or ``"probes"``). A file that does not load or does not fit the model is an error naming it."""
        d = Path(path)
        if not d.is_dir():
            raise ValueError(f"--{kind} {str(path)!r} is not a directory")
        names = []
        for f in sorted(d.glob("*.safetensors")):
            name = check_name(f.stem, kind[:-1])
            if kind == "vectors":
                self.add_vector(name, SteeringVector.load(f, self.model))
            else:
                self.add_probe(name, self._load_probe(f))
            names.append(name)
        return names

    def _load_probe(self, path: Path) -> tuple[str, Any]:
        from probes import load_probe
        from probes.io import check_probe_model

        probe = load_probe(path, self.model)
        hook = (getattr(probe, "meta_", None) or {}).get("hook")
        if not hook:
            raise ValueError(f"{path}: the probe does not record its hook, so it cannot monitor a generation")
        return check_probe_model(probe, self.model, hook), probe

    # -- run time ----------------------------------------------------------------------------------
    def add_vector(self, name: str, vector: SteeringVector, *, replace: bool = True) -> None:
        with self._lock:
            if not replace and name in self.vectors:
                raise RegistryError(f"a vector named {name!r} exists: DELETE it first or pass \"replace\": true",
                                    409, "name", "vector_exists")
            self.vectors[name] = vector

    def add_probe(self, name: str, spec: tuple[str, Any], *, replace: bool = True) -> None:
        with self._lock:
            if not replace and name in self.probes:
                raise RegistryError(f"a probe named {name!r} exists: DELETE it first or pass \"replace\": true",
                                    409, "name", "probe_exists")
            self.probes[name] = spec

    def delete(self, kind: str, name: str) -> None:
        table = self.vectors if kind == "vector" else self.probes
        with self._lock:
            if name not in table:
                raise RegistryError(f"no {kind} named {name!r}", 404, "name", f"{kind}_not_found")
            del table[name]

    def vector(self, name: str, param: str) -> SteeringVector:
        with self._lock:
            v = self.vectors.get(name)
        if v is None:
            raise RegistryError(f"no steering vector named {name!r} (GET /v1/steering/vectors lists them)",
                                400, param, "vector_not_found")
        return v

    def probe(self, name: str, param: str) -> tuple[str, Any]:
        with self._lock:
            p = self.probes.get(name)
        if p is None:
            raise RegistryError(f"no probe named {name!r} (GET /v1/probes lists them)", 400, param, "probe_not_found")
        return p

    # -- uploads -------------------------------------------------------------------------------------
    def vector_from_file(self, data: str) -> SteeringVector:
        """A vector from a base64-encoded steerlens vector file, checked against the model."""
        return self._from_file(data, lambda p: SteeringVector.load(p, self.model))

    def probe_from_file(self, data: str) -> tuple[str, Any]:
        return self._from_file(data, self._load_probe)

    def _from_file(self, data: str, load) -> Any:
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise RegistryError("file must be the base64 encoding of a .safetensors file", param="file") from None
        fd, tmp = tempfile.mkstemp(suffix=".safetensors")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
            try:
                return load(Path(tmp))
            except (ValueError, TypeError, OSError) as e:
                raise RegistryError(str(e).replace(tmp, "the uploaded file"), param="file") from None
        finally:
            os.unlink(tmp)

    def inline_vector(self, layers: Any, param: str, *, hook: str = "resid_post", coeff: float | None = None,
                      max_floats: int | None = None) -> SteeringVector:
        """A vector from ``{"<layer>": [d floats] | "<base64 float32 little-endian>"}``."""
        from steerlens.models import fingerprint, model_name

        if not isinstance(layers, dict) or not layers:
            raise RegistryError(f"{param} must be an object {{layer: [floats] or base64}}, got {type(layers).__name__}",
                                param=param)
        d, n_layers = int(self.model.cfg.d_model), int(self.model.cfg.n_layers)
        limit = max_floats if max_floats is not None else d * n_layers
        dirs: dict[int, torch.Tensor] = {}
        total = 0
        for key, val in layers.items():
            try:
                layer = int(key)
            except (TypeError, ValueError):
                raise RegistryError(f"{param}: layer keys must be integers, got {key!r}", param=param) from None
            if not -n_layers <= layer < n_layers:
                raise RegistryError(f"{param}: layer {layer} does not exist (the model has {n_layers} blocks)", param=param)
            layer %= n_layers
            if isinstance(val, str):
                try:
                    raw = base64.b64decode(val, validate=True)
                except (binascii.Error, ValueError):
                    raise RegistryError(f"{param}.{key}: not valid base64", param=param) from None
                if len(raw) % 4:
                    raise RegistryError(f"{param}.{key}: {len(raw)} bytes is not a whole number of float32", param=param)
                t = torch.frombuffer(bytearray(raw), dtype=torch.float32).clone() if raw else torch.zeros(0)
            elif isinstance(val, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in val):
                t = torch.tensor(val, dtype=torch.float32) if val else torch.zeros(0)
            else:
                raise RegistryError(f"{param}.{key}: expected a list of numbers or a base64 string", param=param)
            total += t.numel()
            if total > limit:
                raise RegistryError(f"{param}: more than {limit} floats (the inline vector size limit)", 413, param,
                                    "vector_too_large")
            if t.numel() != d:
                raise RegistryError(f"{param}.{key}: {t.numel()} values, the model's width is {d}", param=param)
            if not bool(torch.isfinite(t).all()):
                raise RegistryError(f"{param}.{key}: values must be finite", param=param)
            dirs[layer] = t
        try:
            return SteeringVector(dirs, hook=hook, method="inline", model_name=model_name(self.model),
                                  fingerprint=fingerprint(self.model), coeff=coeff)
        except (ValueError, TypeError) as e:
            raise RegistryError(f"{param}: {e}", param=param) from None
