"""``ConceptEraser``: a LEACE eraser per layer, fitted on captured activations with EleutherAI's
``concept-erasure`` and applied while the model runs with ``steer.apply(model, eraser, op="leace")``.

LEACE (Belrose et al. 2023, "LEACE: Perfect linear concept erasure in closed form",
arXiv:2306.03819) is the least-squares affine edit ``r(x) = x − W⁺P_{WΣ_XZ}W(x − E[X])`` after
which the class-conditional means of ``r(X)`` are equal, so no linear classifier beats a
constant one on the fitting distribution.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float

from probes.inputs import layer_hooks, row_labels
from steer.operators import EraserTensors, leace
from steerlens import artifacts
from steerlens.artifacts import PROVENANCE
from steerlens.artifacts import now as _now

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from steerlens.activations import Activations

FORMAT = "steerlens.concept_eraser"
VERSION = 1
_PARTS = EraserTensors._fields  # ("proj_left", "proj_right", "bias")


@dataclasses.dataclass(frozen=True, eq=False)
class ConceptEraser:
    """``{layer: EraserTensors}`` (float32, CPU: ``proj_left [d, k]``, ``proj_right [k, d]``,
    ``bias [d]``, concept-erasure's ``LeaceEraser`` layout) plus provenance, like ``SteeringVector``.

    ``eraser(h, layer)`` erases at ``layer`` (``h [..., d]``); ``steer.apply(model, eraser,
    op="leace")`` erases inside the model. Values may also be ``LeaceEraser`` objects or
    ``(proj_left, proj_right, bias)`` tuples (``bias=None``: no centering).
    """

    erasers: Mapping[int, EraserTensors]
    hook: str = "resid_post"
    method: str = "leace"
    model_name: str | None = None
    fingerprint: str | None = None
    dataset: str | None = None
    dataset_hash: str | None = None
    created: str = dataclasses.field(default_factory=_now)
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.erasers:
            raise ValueError("a ConceptEraser needs at least one layer")
        clean: dict[int, EraserTensors] = {}
        for layer, e in sorted(self.erasers.items()):
            if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
                raise ValueError(f"layers are non-negative block indices, got {layer!r}")
            clean[layer] = _tensors(e, layer)
        widths = {layer: e.bias.numel() for layer, e in clean.items()}
        if len(set(widths.values())) > 1:
            raise ValueError(f"the layers' erasers have different widths: {widths}")
        object.__setattr__(self, "erasers", clean)
        object.__setattr__(self, "info", dict(self.info))

    # -- access ------------------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return list(self.erasers)

    @property
    def d_model(self) -> int:
        return next(iter(self.erasers.values())).bias.numel()

    def __getitem__(self, layer: int) -> EraserTensors:
        if layer not in self.erasers:
            raise KeyError(f"no eraser at layer {layer}; this ConceptEraser has layers {self.layers}")
        return self.erasers[layer]

    def __len__(self) -> int:
        return len(self.erasers)

    def __call__(self, h: Float[torch.Tensor, "... d"], layer: int | None = None) -> Float[torch.Tensor, "... d"]:
        """Erase the concept from ``h`` with the eraser of ``layer`` (optional for one layer)."""
        if layer is None:
            if len(self) != 1:
                raise ValueError(f"this ConceptEraser has layers {self.layers}: pass layer=")
            layer = self.layers[0]
        return leace(h, self[layer].to(h.device))

    def __repr__(self) -> str:
        ranks = {layer: int((e.proj_left.abs().sum(0) > 0).sum()) for layer, e in self.erasers.items()}
        return (f"ConceptEraser(method={self.method!r}, model={self.model_name!r}, hook={self.hook!r}, "
                f"d_model={self.d_model}, rank={ranks})")

    # -- model checks --------------------------------------------------------------------------
    def check_compatible(self, model: "TransformerBridge", *, force: bool = False) -> None:
        """Raise ``ValueError`` when the model's width differs, a layer does not exist, or (unless
        ``force``, which then warns) the model's fingerprint differs from the one the eraser was
        fitted on (``steerlens.artifacts.check_compatible``)."""
        artifacts.check_compatible(model, self, "eraser", force=force)

    # -- storage -------------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return artifacts.Meta(FORMAT, VERSION, hook=self.hook, layers=self.layers, d_model=self.d_model,
                              method=self.method, model_name=self.model_name, fingerprint=self.fingerprint,
                              dataset=self.dataset, dataset_hash=self.dataset_hash, created=self.created,
                              info=self.info).to_dict()

    def save(self, path: str | os.PathLike) -> Path:
        """Write safetensors (``layer.L.proj_left`` etc. + JSON metadata) atomically."""
        tensors = {f"layer.{layer}.{part}": t for layer, e in self.erasers.items() for part, t in zip(_PARTS, e)}
        return artifacts.save(path, tensors, self.metadata())

    @classmethod
    def load(cls, path: str | os.PathLike, model: "TransformerBridge | None" = None, *,
             force: bool = False) -> "ConceptEraser":
        """Read a file written by ``save``; ``ValueError`` naming the file if it is not a valid one
        (or, with ``model``, does not fit it: ``check_compatible``)."""
        tensors, meta = artifacts.load(path, FORMAT, VERSION, what="concept eraser", fields=PROVENANCE,
                                       required=("layers", "d_model"))
        layers, d = meta["layers"], meta["d_model"]
        shapes = {f"layer.{layer}.{part}": shape for layer in layers
                  for part, shape in zip(_PARTS, ((d, None), (None, d), (d,)))}
        artifacts.check_tensors(path, tensors, shapes, f"metadata layers {layers} and d_model {d}")
        fields = {f.name for f in dataclasses.fields(cls)} - {"erasers"}
        with artifacts.naming(path):
            eraser = cls(erasers={layer: EraserTensors(*(tensors[f"layer.{layer}.{p}"] for p in _PARTS)) for layer in layers},
                         **{k: v for k, v in meta.items() if k in fields and v is not None})
            if model is not None:
                eraser.check_compatible(model, force=force)
        return eraser


class EraserFitter:
    """Streaming LEACE statistics per layer (one ``concept_erasure.LeaceFitter`` each, float64):
    ``update`` with one batch at a time (memory bounded by the batch and the d×d moments), then
    ``eraser()`` freezes them into a ``ConceptEraser`` (arXiv:2306.03819, eq. 6).

    ``classes``: the concept's classes, known up front so every batch is one-hot encoded the same
    way (without the first class: the centred indicators of k classes span k − 1 dimensions), or
    ``None`` to stream a real-valued concept matrix ``z [n, k]`` instead (e.g. probe scores).
    """

    def __init__(self, classes: Sequence | None = None, *, hook: str = "resid_post") -> None:
        self.classes = classes
        self.hook = hook

    def update(self, x: Mapping[int, torch.Tensor], labels: Sequence | np.ndarray | torch.Tensor | None = None, *,
               z: torch.Tensor | np.ndarray | None = None) -> "EraserFitter":
        """Add a batch: ``x`` is ``{layer: tensor[n, d]}``; ``labels [n]`` (with ``classes``) or
        ``z [n, k]`` (without). Returns ``self``."""
        from concept_erasure import LeaceFitter

        zb = self._concept(labels, z)
        if not isinstance(x, Mapping) or not x:
            raise TypeError(f"x must be a non-empty mapping {{layer: tensor[n, d]}}, got {type(x).__name__}")
        if not hasattr(self, "fitters_"):
            self.fitters_: dict[int, Any] = {}
            self.n_ = 0
            self.z_dim_ = zb.shape[1]
        if zb.shape[1] != self.z_dim_:
            raise ValueError(f"z has {zb.shape[1]} columns in this batch but {self.z_dim_} before")
        for layer, xb in x.items():
            xb = _matrix(xb, f"layer {layer}", len(zb))  # float64: eigh of a near-singular covariance needs it
            f = self.fitters_.get(layer)
            if f is None:
                if self.n_:
                    raise ValueError(f"layer {layer} appeared after the first batch; layers so far: {sorted(self.fitters_)}")
                f = self.fitters_[layer] = LeaceFitter(xb.shape[1], zb.shape[1], dtype=torch.float64)
            elif xb.shape[1] != f.mean_x.numel():
                raise ValueError(f"activations at layer {layer} are {xb.shape[1]} wide in this batch, "
                                 f"{f.mean_x.numel()} before")
            f.update(xb, zb)
        self.n_ += len(zb)
        return self

    def eraser(self, **provenance: Any) -> ConceptEraser:
        """The frozen ``ConceptEraser`` of the statistics so far (``provenance``: ``ConceptEraser``
        fields such as ``model_name``, ``dataset``, ``info``)."""
        if not getattr(self, "n_", 0):
            raise ValueError("the dataset is empty: no examples to fit an eraser on")
        erasers = {}
        for layer, f in sorted(self.fitters_.items()):
            e = f.eraser
            erasers[layer] = EraserTensors(e.proj_left, e.proj_right, e.bias)
        info = {**({"classes": [_py(c) for c in self.classes]} if self.classes is not None else {"z_dim": self.z_dim_}),
                "n": self.n_, **dict(provenance.pop("info", {}) or {})}
        return ConceptEraser(erasers, hook=self.hook, info=info, **provenance)

    def _concept(self, labels, z) -> torch.Tensor:
        if self.classes is not None:
            if z is not None:
                raise ValueError("this EraserFitter has classes: pass labels, not z")
            y = row_labels(labels, [])
            index = {_py(c): i for i, c in enumerate(self.classes)}
            if len(index) < 2:
                raise ValueError(f"classes holds a single class ({_py(self.classes[0])!r}): there is no concept to erase")
            unknown = [_py(v) for v in y if _py(v) not in index]
            if unknown:
                raise ValueError(f"labels hold {unknown[0]!r}, not one of classes {list(index)}")
            idx = np.asarray([index[_py(v)] for v in y], dtype=np.int64)
            return torch.nn.functional.one_hot(torch.as_tensor(idx), len(index))[:, 1:].double()
        if z is None:
            raise ValueError("this EraserFitter has no classes: pass z [n, k] (or build it with classes=...)")
        zt = torch.as_tensor(np.asarray(z) if not isinstance(z, torch.Tensor) else z).detach().to("cpu", torch.float64)
        zt = zt[:, None] if zt.ndim == 1 else zt
        if zt.ndim != 2 or not torch.isfinite(zt).all():
            raise ValueError(f"z must be a finite [n, k] matrix, got shape {tuple(zt.shape)}")
        return zt


def fit_eraser(acts: "Activations | Mapping[str, torch.Tensor]", labels: Sequence | np.ndarray | torch.Tensor | None = None,
               *, layers: int | Sequence[int] | None = None, hook: str = "resid_post",
               dataset: str | None = None, dataset_hash: str | None = None, batch_size: int = 1024) -> ConceptEraser:
    """Fit a LEACE eraser (``EraserFitter``: ``concept_erasure.LeaceFitter``, float64) at each layer of
    ``hook``, streaming ``batch_size`` rows at a time.

    ``acts``: a ``steerlens.Activations`` (pooled, one row per example) or a mapping
    ``{hook_name: tensor[n, d]}``. ``labels`` (default ``acts.labels``): the concept, with two or
    more classes; it is one-hot encoded without its first class (the centred indicators of k
    classes span k − 1 dimensions), so the erased class-conditional means are all equal.
    ``layers``: default every captured layer of ``hook``. ``dataset``/``dataset_hash`` are stored
    as provenance. Cross-covariance singular values (after whitening) below concept-erasure's
    ``svd_tol`` (0.01) are left in place.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    tensors, rows, info = _unpack(acts)
    by_layer = layer_hooks(list(tensors), hook, layers)
    y = row_labels(labels, rows)
    if len(y) == 0:
        raise ValueError("the dataset is empty: no examples to fit an eraser on")
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(f"labels hold a single class ({_py(classes[0])!r}): there is no concept to erase")
    mats = {layer: tensors[name] for layer, name in by_layer.items()}
    for layer, name in by_layer.items():  # checked whole (cheap, in their own dtype) before any fitting
        x = torch.as_tensor(mats[layer])
        if x.ndim != 2:
            raise ValueError(f"activations at {name!r} must be [n, d], got shape {tuple(x.shape)}")
        if len(x) != len(y):
            raise ValueError(f"activations at {name!r} have {len(x)} rows but there are {len(y)} labels")
        bad = ~torch.isfinite(x).all(1)
        if bad.any():
            raise ValueError(f"activations at {name!r} contain NaN or inf in {int(bad.sum())} of {len(y)} rows")
    fitter = EraserFitter(classes, hook=hook)
    for start in range(0, len(y), batch_size):
        sl = slice(start, start + batch_size)
        fitter.update({layer: x[sl] for layer, x in mats.items()}, y[sl])
    return fitter.eraser(model_name=info.get("model"), fingerprint=info.get("fingerprint"), dataset=dataset,
                         dataset_hash=dataset_hash, info={**({"pool": info["pool"]} if info.get("pool") else {})})


# -- helpers ----------------------------------------------------------------------------------
def _tensors(e: Any, layer: int) -> EraserTensors:
    """An ``EraserTensors``, ``LeaceEraser`` or 3-tuple -> float32 CPU ``EraserTensors``, checked."""
    parts = tuple(e) if isinstance(e, tuple) else tuple(getattr(e, p, None) for p in _PARTS)
    if len(parts) != 3 or parts[0] is None or parts[1] is None:
        raise TypeError(f"the eraser at layer {layer} must be (proj_left, proj_right, bias) or a "
                        f"LeaceEraser, got {type(e).__name__}")
    # own copies: tensors shared between layers or parts (e.g. right = left.T) cannot be saved
    left, right = (torch.as_tensor(t).detach().to("cpu", torch.float32).clone(memory_format=torch.contiguous_format) for t in parts[:2])
    if left.ndim != 2 or right.ndim != 2 or right.shape != left.shape[::-1]:
        raise ValueError(f"the eraser at layer {layer}: proj_left {tuple(left.shape)} and proj_right "
                         f"{tuple(right.shape)} must be [d, k] and [k, d]")
    bias = torch.zeros(left.shape[0]) if parts[2] is None else torch.as_tensor(parts[2]).detach().to("cpu", torch.float32)
    bias = bias.reshape(-1).clone()
    if bias.numel() != left.shape[0]:
        raise ValueError(f"the eraser at layer {layer}: bias has {bias.numel()} entries, proj_left {left.shape[0]} rows")
    out = EraserTensors(left, right, bias)
    if not all(torch.isfinite(t).all() for t in out):
        raise ValueError(f"the eraser at layer {layer} holds NaN or inf")
    return out


def _unpack(acts) -> tuple[Any, list[dict], dict]:
    """-> (hook name -> tensor lookup, rows, info); an ``Activations`` is read one hook at a time."""
    if hasattr(acts, "hooks") and hasattr(acts, "rows"):
        if getattr(acts, "pool", None) == "all":
            raise ValueError("fit_eraser needs one row per example: capture with pool='last', 'mean' or positions, not 'all'")
        return acts, list(acts.rows), {**acts.info, "pool": acts.pool}
    if isinstance(acts, Mapping):
        return dict(acts), [], {}
    raise TypeError(f"acts must be a steerlens Activations or a mapping {{hook: tensor[n, d]}}, got {type(acts).__name__}")


def _matrix(x, name: str, n: int) -> torch.Tensor:
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if x.ndim != 2:
        raise ValueError(f"activations at {name!r} must be [n, d], got shape {tuple(x.shape)}")
    if len(x) != n:
        raise ValueError(f"activations at {name!r} have {len(x)} rows but there are {n} labels")
    bad = ~torch.isfinite(x).all(1)
    if bad.any():
        raise ValueError(f"activations at {name!r} contain NaN or inf in {int(bad.sum())} of {n} rows")
    return x


def _py(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else x
