"""Probe files: safetensors (coefficients, direction, standardisation) + JSON metadata (model
fingerprint, hook, layer, pooling, method, dataset hash, metrics), written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from probes.estimators import _LinearProbe
from steerlens import artifacts
from steerlens.artifacts import DICT, OPT_DICT, OPT_INT, OPT_STR, POS_INT, STR, Check

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

FORMAT = "steerlens.probe"
VERSION = 1
_ARRAYS = ("coef_", "intercept_", "direction_", "mean_", "scale_")
_SCALARS = ("C_", "shrinkage_", "n_iter_", "n_features_in_")

_CLASSES: Check = (lambda v: isinstance(v, list) and len(v) == 2 and all(isinstance(c, (str, int, float)) for c in v),
                   "a list of two class labels")
#: metadata checked on load
_FIELDS: dict[str, Check] = {
    "method": STR, "params": DICT, "classes": _CLASSES, "width": POS_INT, "fitted": DICT, "hook": OPT_STR,
    "layer": OPT_INT, "pool": OPT_STR, "model": OPT_STR, "fingerprint": OPT_STR, "dataset": OPT_STR, "dataset_hash": OPT_STR,
    "metrics": OPT_DICT, "created": OPT_STR,
}


def save_probe(
    path: str | os.PathLike,
    probe: _LinearProbe,
    *,
    model: "TransformerBridge | None" = None,
    hook: str | None = None,
    pool: str | None = None,
    dataset: str | None = None,
    dataset_hash: str | None = None,
    metrics: dict | None = None,
) -> Path:
    """Write ``probe`` to ``path`` (a ``.safetensors`` file). Metadata comes from ``probe.meta_``
    (set by ``sweep_layers``) overridden by the arguments; ``model`` records its name, width and
    fingerprint, checked again by ``load_probe``. ``pool``: how the activations it was fitted on
    were pooled (``"last"``, ``"mean"``, ...; ``sweep_layers`` records it), so that its users
    (``steer.evaluate.ProbeScore``) read it the same way.

    Probes are scikit-learn estimators, so they are saved and loaded by these free functions
    (``save_probe``/``load_probe``); steerlens' own artifact classes have ``save``/``load`` methods.
    """
    from steerlens.hooks import hook_layer

    from probes.sweep import method_name

    if not hasattr(probe, "coef_"):
        raise ValueError("the probe is not fitted: call fit (or sweep_layers) before saving it")
    meta = dict(getattr(probe, "meta_", None) or {})
    if hook is not None:
        meta["hook"], meta["layer"] = hook, hook_layer(hook)
    if pool is not None:
        if pool not in ("last", "mean", "all", "positions"):
            raise ValueError(f"pool must be how capture pooled the activations ('last', 'mean', 'all' or "
                             f"'positions'), got {pool!r}")
        meta["pool"] = pool
    if dataset is not None:
        meta["dataset"] = dataset
    if dataset_hash is not None:
        meta["dataset_hash"] = dataset_hash
    if metrics is not None:
        meta["metrics"] = metrics
    if model is not None:
        from steerlens.models import fingerprint, model_name

        meta["model"], meta["fingerprint"] = model_name(model), fingerprint(model)
        if meta.get("hook"):
            meta["hook"] = _resolve(model, meta["hook"])
            artifacts.check_compatible(model, _record(meta, meta["hook"], int(probe.coef_.shape[1])), "probe")
    meta.update(
        format=FORMAT, version=VERSION, method=method_name(probe), params=_params(probe),
        classes=[c.item() if hasattr(c, "item") else c for c in probe.classes_],
        width=int(probe.coef_.shape[1]), created=artifacts.now(),
        fitted={k: getattr(probe, k) for k in _SCALARS if hasattr(probe, k)},
    )
    tensors = {k.rstrip("_"): torch.from_numpy(np.ascontiguousarray(getattr(probe, k), dtype=np.float32)) for k in _ARRAYS}
    return artifacts.save(path, tensors, meta)


def load_probe(path: str | os.PathLike, model: "TransformerBridge | None" = None, *, force: bool = False) -> _LinearProbe:
    """Read a probe file. With ``model``, its width must match the probe's hook and its
    fingerprint the one recorded (``force=True`` loads a probe onto another model with a
    warning; a width mismatch is always an error). ``probe.meta_`` holds the metadata. Errors
    name the file."""
    from probes.sweep import make_probe

    tensors, meta = artifacts.load(path, FORMAT, VERSION, what="probe", fields=_FIELDS,
                                   required=("method", "params", "classes", "width"))
    w = meta["width"]
    artifacts.check_tensors(path, tensors, {"coef": (1, w), "intercept": (1,), "direction": (w,), "mean": (w,), "scale": (w,)},
                            f"metadata width {w}")
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["params"].items()}
    with artifacts.naming(path):
        probe = make_probe(meta["method"], **params)
    for k in _ARRAYS:
        setattr(probe, k, tensors[k.rstrip("_")].numpy().astype(np.float32))
    for k, v in meta.get("fitted", {}).items():
        if k in _SCALARS:
            setattr(probe, k, v)
    probe.classes_ = np.asarray(meta["classes"])
    probe.n_features_in_ = int(probe.coef_.shape[1])
    probe.meta_ = {k: v for k, v in meta.items() if k not in ("params", "fitted")}
    if model is not None:
        hook = meta.get("hook")
        with artifacts.naming(path):
            if hook:
                check_probe_model(probe, model, hook, force=force)
            else:  # where it reads is unknown: the fingerprint only
                artifacts.check_compatible(model, _record(probe.meta_, None, None), "probe", force=force)
    return probe


def check_probe_model(probe: _LinearProbe, model: "TransformerBridge", hook: str, *, force: bool = False) -> str:
    """Resolve ``hook`` on ``model`` (a full hook name) and check the probe fits there: same width
    (always) and, if the probe records one, the same model fingerprint (unless ``force``, which
    then warns): ``steerlens.artifacts.check_compatible``."""
    if not hasattr(probe, "coef_"):
        raise ValueError("the probe is not fitted")
    name = _resolve(model, hook)
    meta = getattr(probe, "meta_", None) or {}
    artifacts.check_compatible(model, _record(meta, name, int(probe.coef_.shape[1])), "probe", force=force)
    return name


def _record(meta: dict, hook: str | None, width: int | None) -> artifacts.Meta:
    """The artifact record of a probe's metadata (probe files keep their own keys ``model``,
    ``layer`` and ``width``); ``None`` hook/width: not checked."""
    from steerlens.hooks import hook_layer

    layer = None if hook is None else hook_layer(hook)
    return artifacts.Meta(FORMAT, VERSION, hook=hook, layers=None if layer is None else [layer], d_model=width,
                          method=meta.get("method"), model_name=meta.get("model"), fingerprint=meta.get("fingerprint"),
                          dataset=meta.get("dataset"), dataset_hash=meta.get("dataset_hash"), created=meta.get("created"))


def _resolve(model, hook: str) -> str:
    from steerlens.hooks import resolve_hooks

    names = resolve_hooks(model, hook)
    if len(names) != 1:
        raise ValueError(f"hook {hook!r} names {len(names)} hook points; give one full name such as 'blocks.6.hook_resid_post'")
    return names[0]


def _params(probe: _LinearProbe) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in probe.get_params().items()}
