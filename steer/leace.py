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


def fit_eraser(acts: "Activations | Mapping[str, torch.Tensor]", labels: Sequence | np.ndarray | torch.Tensor | None = None,
               *, layers: int | Sequence[int] | None = None, hook: str = "resid_post",
               dataset: str | None = None, dataset_hash: str | None = None) -> ConceptEraser:
    """Fit a LEACE eraser (``concept_erasure.LeaceFitter``, float64) at each layer of ``hook``.

    ``acts``: a ``steerlens.Activations`` (pooled, one row per example) or a mapping
    ``{hook_name: tensor[n, d]}``. ``labels`` (default ``acts.labels``): the concept, with two or
    more classes; it is one-hot encoded without its first class (the centred indicators of k
    classes span k − 1 dimensions), so the erased class-conditional means are all equal.
    ``layers``: default every captured layer of ``hook``. ``dataset``/``dataset_hash`` are stored
    as provenance. Cross-covariance singular values (after whitening) below concept-erasure's
    ``svd_tol`` (0.01) are left in place.
    """
    from concept_erasure import LeaceFitter

    tensors, rows, info = _unpack(acts)
    by_layer = layer_hooks(list(tensors), hook, layers)
    y = row_labels(labels, rows)
    if len(y) == 0:
        raise ValueError("the dataset is empty: no examples to fit an eraser on")
    classes, idx = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"labels hold a single class ({_py(classes[0])!r}): there is no concept to erase")
    z = torch.nn.functional.one_hot(torch.as_tensor(idx), len(classes))[:, 1:].double()
    erasers = {}
    for layer, name in by_layer.items():
        x = _matrix(tensors[name], name, len(y))  # float64: eigh of a near-singular covariance needs it
        e = LeaceFitter(x.shape[1], z.shape[1], dtype=torch.float64).update(x, z).eraser
        erasers[layer] = EraserTensors(e.proj_left, e.proj_right, e.bias)
    return ConceptEraser(erasers, hook=hook, model_name=info.get("model"), fingerprint=info.get("fingerprint"),
                         dataset=dataset, dataset_hash=dataset_hash,
                         info={"classes": [_py(c) for c in classes], "n": len(y),
                               **({"pool": info["pool"]} if info.get("pool") else {})})


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
