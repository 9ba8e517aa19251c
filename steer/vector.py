"""``SteeringVector``: one direction per layer plus the metadata that says where it came from.

Layers follow steerlens' one convention (``steerlens.hooks``): 0-based blocks, and a vector at
layer L acts on the output of block L (``blocks.L.hook_resid_post``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float

from steerlens import artifacts
from steerlens.artifacts import OPT_NUMBER, PROVENANCE, Check
from steerlens.artifacts import now as _now
from steerlens.hooks import hook_kind

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from steerlens.activations import Activations

FORMAT = "steerlens.steering_vector"
VERSION = 1
_PREFIX = "layer."
#: the metadata of vector files (``metadata()``), checked on load
VECTOR_FIELDS: dict[str, Check] = {**PROVENANCE, "coeff": OPT_NUMBER}


@dataclasses.dataclass(frozen=True, eq=False)
class SteeringVector:
    """``{layer: tensor[d]}`` (float32, CPU) plus provenance.

    Arithmetic returns new vectors: ``a + b``, ``a - b``, ``-a``, ``2.0 * a``, ``a / 2``,
    ``a.orthogonalize(b)``. ``coeff`` is the calibrated coefficient (see ``steer.calibrate``),
    ``None`` until calibrated; ``info`` holds anything else (calibration details, pooling, ...).
    """

    directions: Mapping[int, Float[torch.Tensor, " d"]]
    hook: str = "resid_post"
    method: str = "custom"
    model_name: str | None = None
    fingerprint: str | None = None
    dataset: str | None = None
    dataset_hash: str | None = None
    created: str = dataclasses.field(default_factory=_now)
    coeff: float | None = None
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.directions:
            raise ValueError("a SteeringVector needs at least one layer")
        clean: dict[int, torch.Tensor] = {}
        width = None
        for layer, v in sorted(self.directions.items()):
            if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
                raise ValueError(f"layers are non-negative block indices, got {layer!r}")
            v = torch.as_tensor(v).detach().to("cpu", torch.float32).reshape(-1).clone()  # own memory: saveable
            if not torch.isfinite(v).all():
                raise ValueError(f"the direction at layer {layer} holds NaN or inf")
            if width is not None and v.numel() != width:
                raise ValueError(f"layer {layer} has width {v.numel()}, other layers {width}")
            width = v.numel()
            clean[layer] = v
        if self.coeff is not None:
            try:
                finite = math.isfinite(self.coeff)
            except (OverflowError, TypeError):
                finite = False
            if not finite:
                raise ValueError(f"coeff must be finite, got {self.coeff!r}")
        object.__setattr__(self, "directions", clean)
        object.__setattr__(self, "info", dict(self.info))

    # -- access ------------------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return list(self.directions)

    @property
    def d_model(self) -> int:
        return next(iter(self.directions.values())).numel()

    def __getitem__(self, layer: int) -> Float[torch.Tensor, " d"]:
        if layer not in self.directions:
            raise KeyError(f"no direction at layer {layer}; this vector has layers {self.layers}")
        return self.directions[layer]

    def __len__(self) -> int:
        return len(self.directions)

    def norms(self) -> dict[int, float]:
        return {layer: float(v.norm()) for layer, v in self.directions.items()}

    def __repr__(self) -> str:
        norms = ", ".join(f"{k}: {v:.3g}" for k, v in self.norms().items())
        return (f"SteeringVector(method={self.method!r}, model={self.model_name!r}, hook={self.hook!r}, "
                f"norms={{{norms}}}, coeff={self.coeff})")

    # -- derived vectors ---------------------------------------------------------------------
    def replace(self, **changes: Any) -> "SteeringVector":
        return dataclasses.replace(self, **changes)

    def _map(self, fn, method: str | None = None) -> "SteeringVector":
        return self.replace(directions={k: fn(v) for k, v in self.directions.items()},
                            method=method or self.method, coeff=None, created=_now())

    def select(self, layers: list[int] | int) -> "SteeringVector":
        layers = [layers] if isinstance(layers, int) else list(layers)
        return self.replace(directions={layer: self[layer] for layer in layers})

    def scale(self, a: float) -> "SteeringVector":
        if not math.isfinite(a):
            raise ValueError(f"scale must be finite, got {a}")
        return self._map(lambda v: v * a)

    def normalized(self) -> "SteeringVector":
        """Unit norm at every layer."""
        return self._map(lambda v: v / v.norm().clamp_min(1e-12))

    def orthogonalize(self, other: "SteeringVector") -> "SteeringVector":
        """Remove ``other``'s direction at each shared layer: ``v ← v − (v·û)û``."""
        self._check_same_space(other)
        out = {}
        for layer, v in self.directions.items():
            if layer in other.directions:
                u = other[layer] / other[layer].norm().clamp_min(1e-12)
                v = v - (v @ u) * u
            out[layer] = v
        return self.replace(directions=out, method=f"{self.method}-orth", coeff=None, created=_now())

    def random_like(self, seed: int = 0, acts: "Activations | None" = None) -> "SteeringVector":
        """A random direction with the same norm at each layer: the control for an effect.

        Isotropic by default (``r ~ N(0, I)``). With ``acts`` (activations of the vector's hook at
        its layers, one row per text), shaped like the data instead: ``r = X̃ᵀz``, ``z ~ N(0, Iₙ)``,
        for the centred activations ``X̃`` [n, d], i.e. ``r ~ N(0, n·Σ)`` within the span where
        activations vary (an isotropic direction mostly points where they never go)."""
        from steer.computing import _tensor  # the lookup the vector was computed with (computing imports this module)

        g = torch.Generator().manual_seed(1_000_003 * seed + 20_231_215)  # salted: not torch's seed-0 stream
        out = {}
        for layer, v in self.directions.items():
            if acts is None:
                r = torch.randn(v.numel(), generator=g)
            else:
                x = _tensor(acts, layer, hook_kind(self.hook))
                if x.shape[1] != v.numel() or x.shape[0] < 2:
                    raise ValueError(f"random_like: acts at layer {layer} must be [n >= 2, {v.numel()}] (one pooled "
                                     f"row per text), got {list(x.shape)}")
                r = (x - x.mean(0)).T @ torch.randn(x.shape[0], generator=g)
            out[layer] = r * (v.norm() / r.norm())
        info = {"control_of": self.method, "seed": seed, "shape": "isotropic" if acts is None else "activations"}
        return self.replace(directions=out, method="random", coeff=self.coeff, created=_now(), info=info)

    def with_coeff(self, coeff: float, **info: Any) -> "SteeringVector":
        """The same vector with a calibrated coefficient (and its details) in the metadata."""
        return self.replace(coeff=float(coeff), info={**self.info, **info})

    def _check_same_space(self, other: "SteeringVector") -> None:
        if not isinstance(other, SteeringVector):
            raise TypeError(f"expected a SteeringVector, got {type(other).__name__}")
        if other.d_model != self.d_model:
            raise ValueError(f"width mismatch: {self.d_model} vs {other.d_model}")
        if self.fingerprint and other.fingerprint and self.fingerprint != other.fingerprint:
            raise ValueError(f"vectors come from different models ({self.model_name} "
                             f"{self.fingerprint} vs {other.model_name} {other.fingerprint})")
        if self.hook != other.hook:
            raise ValueError(f"vectors act on different hooks: {self.hook!r} vs {other.hook!r}")

    def _combine(self, other: "SteeringVector", sign: float) -> "SteeringVector":
        self._check_same_space(other)
        out = dict(self.directions)
        for layer, v in other.directions.items():
            out[layer] = out[layer] + sign * v if layer in out else sign * v
        return self.replace(directions=out, method="sum", coeff=None, created=_now(),
                            dataset=self.dataset if self.dataset == other.dataset else None,
                            dataset_hash=self.dataset_hash if self.dataset_hash == other.dataset_hash else None)

    def __add__(self, other: "SteeringVector") -> "SteeringVector":
        return self._combine(other, 1.0)

    def __sub__(self, other: "SteeringVector") -> "SteeringVector":
        return self._combine(other, -1.0)

    def __neg__(self) -> "SteeringVector":
        return self.scale(-1.0)

    def __mul__(self, a: float) -> "SteeringVector":
        if not isinstance(a, (int, float)) or isinstance(a, bool):
            return NotImplemented
        return self.scale(float(a))

    __rmul__ = __mul__

    def __truediv__(self, a: float) -> "SteeringVector":
        if not isinstance(a, (int, float)) or a == 0:
            raise ValueError(f"can only divide by a non-zero number, got {a!r}")
        return self.scale(1.0 / float(a))

    def allclose(self, other: "SteeringVector", atol: float = 1e-6) -> bool:
        return self.layers == other.layers and all(
            torch.allclose(self[k], other[k], atol=atol) for k in self.layers)

    # -- model checks --------------------------------------------------------------------------
    def check_compatible(self, model: "TransformerBridge", *, force: bool = False) -> None:
        """Raise ``ValueError`` when the model's width differs, a layer does not exist, or (unless
        ``force``, which then warns) the model's fingerprint differs from the one the vector was
        computed on (``steerlens.artifacts.check_compatible``)."""
        artifacts.check_compatible(model, self, "vector", force=force)

    # -- storage -------------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        meta = artifacts.Meta(FORMAT, VERSION, hook=self.hook, layers=self.layers, d_model=self.d_model,
                              method=self.method, model_name=self.model_name, fingerprint=self.fingerprint,
                              dataset=self.dataset, dataset_hash=self.dataset_hash, created=self.created, info=self.info)
        return {**meta.to_dict(), "coeff": self.coeff}

    def save(self, path: str | os.PathLike) -> Path:
        """Write safetensors (``layer.L`` tensors + JSON metadata) atomically."""
        return artifacts.save(path, {f"{_PREFIX}{k}": v for k, v in self.directions.items()}, self.metadata())

    @classmethod
    def load(cls, path: str | os.PathLike, model: "TransformerBridge | None" = None, *,
             force: bool = False) -> "SteeringVector":
        """Read a file written by ``save``; ``ValueError`` naming the file if it is not a valid one
        (or, with ``model``, does not fit it: ``check_compatible``)."""
        tensors, meta = artifacts.load(path, FORMAT, VERSION, what="steering vector", fields=VECTOR_FIELDS,
                                       required=("layers", "d_model"))
        layers, d = meta["layers"], meta["d_model"]
        artifacts.check_tensors(path, tensors, {f"{_PREFIX}{k}": (d,) for k in layers},
                                f"metadata layers {layers} and d_model {d}")
        with artifacts.naming(path):
            vector = cls.from_metadata({k: tensors[f"{_PREFIX}{k}"] for k in layers}, meta)
            if model is not None:
                vector.check_compatible(model, force=force)
        return vector

    @classmethod
    def from_metadata(cls, directions: Mapping[int, torch.Tensor], meta: Mapping[str, Any]) -> "SteeringVector":
        fields = {f.name for f in dataclasses.fields(cls)} - {"directions"}
        return cls(directions=directions, **{k: v for k, v in meta.items() if k in fields and v is not None})
