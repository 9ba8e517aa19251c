"""Probe files: safetensors (coefficients, direction, standardisation) + JSON metadata (model
fingerprint, hook, layer, method, dataset hash, metrics), written atomically."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from probes.estimators import _LinearProbe
from steer.vector import DICT, OPT_DICT, OPT_INT, OPT_STR, POS_INT, STR, Check, check_tensors, naming, read_checked

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
    "layer": OPT_INT, "model": OPT_STR, "fingerprint": OPT_STR, "dataset": OPT_STR, "dataset_hash": OPT_STR,
    "metrics": OPT_DICT, "created": OPT_STR,
}


def save_probe(
    path: str | os.PathLike,
    probe: _LinearProbe,
    *,
    model: "TransformerBridge | None" = None,
    hook: str | None = None,
    dataset: str | None = None,
    dataset_hash: str | None = None,
    metrics: dict | None = None,
) -> Path:
    """Write ``probe`` to ``path`` (a ``.safetensors`` file). Metadata comes from ``probe.meta_``
    (set by ``sweep_layers``) overridden by the arguments; ``model`` records its name, width and
    fingerprint, checked again by ``load_probe``."""
    from steerlens.hooks import hook_layer
    from steerlens.io import save_tensors

    from probes.sweep import method_name

    if not hasattr(probe, "coef_"):
        raise ValueError("the probe is not fitted: call fit (or sweep_layers) before saving it")
    meta = dict(getattr(probe, "meta_", None) or {})
    if hook is not None:
        meta["hook"], meta["layer"] = hook, hook_layer(hook)
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
            expect = _hook_width(model, meta["hook"])
            if expect is not None and expect != probe.coef_.shape[1]:
                raise ValueError(f"the probe has width {probe.coef_.shape[1]} but {meta['hook']!r} of this model has width {expect}")
    meta.update(
        format=FORMAT, version=VERSION, method=method_name(probe), params=_params(probe),
        classes=[c.item() if hasattr(c, "item") else c for c in probe.classes_],
        width=int(probe.coef_.shape[1]), created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        fitted={k: getattr(probe, k) for k in _SCALARS if hasattr(probe, k)},
    )
    tensors = {k.rstrip("_"): torch.from_numpy(np.ascontiguousarray(getattr(probe, k), dtype=np.float32)) for k in _ARRAYS}
    save_tensors(path, tensors, meta)
    return Path(path)


def load_probe(path: str | os.PathLike, model: "TransformerBridge | None" = None, *, force: bool = False) -> _LinearProbe:
    """Read a probe file. With ``model``, its width must match the probe's hook and its
    fingerprint the one recorded (``force=True`` loads a probe onto another model with a
    warning; a width mismatch is always an error). ``probe.meta_`` holds the metadata."""
    from probes.sweep import make_probe

    tensors, meta = read_checked(path, FORMAT, VERSION, "probe", _FIELDS, ("method", "params", "classes", "width"))
    w = meta["width"]
    check_tensors(path, tensors, {"coef": (1, w), "intercept": (1,), "direction": (w,), "mean": (w,), "scale": (w,)},
                  f"metadata width {w}")
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["params"].items()}
    with naming(path):
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
        if hook:
            check_probe_model(probe, model, hook, force=force)
        else:
            _check_fingerprint(probe.meta_, model, force, str(path))
    return probe


def check_probe_model(probe: _LinearProbe, model: "TransformerBridge", hook: str, *, force: bool = False) -> str:
    """Resolve ``hook`` on ``model`` (a full hook name) and check the probe fits there: same width
    (always) and, if the probe records one, the same model fingerprint (unless ``force``)."""
    if not hasattr(probe, "coef_"):
        raise ValueError("the probe is not fitted")
    name = _resolve(model, hook)
    expect = _hook_width(model, name)
    width = int(probe.coef_.shape[1])
    if expect is not None and expect != width:
        raise ValueError(
            f"probe width {width} does not match {name!r} of this model (width {expect}): "
            f"the probe was made for another model ({(getattr(probe, 'meta_', None) or {}).get('model')!r})"
        )
    _check_fingerprint(getattr(probe, "meta_", None) or {}, model, force, "the probe")
    return name


def _check_fingerprint(meta: dict, model, force: bool, what: str) -> None:
    from steerlens.models import fingerprint, model_name

    recorded = meta.get("fingerprint")
    if not recorded:
        return
    actual = fingerprint(model)
    if recorded != actual:
        msg = (f"{what} was made on model {meta.get('model')!r} (fingerprint {recorded}), "
               f"not on {model_name(model)!r} (fingerprint {actual})")
        if not force:
            raise ValueError(msg + "; pass force=True to use it anyway")
        warnings.warn(msg + "; used anyway (force=True)", stacklevel=3)


def _resolve(model, hook: str) -> str:
    from steerlens.hooks import resolve_hooks

    names = resolve_hooks(model, hook)
    if len(names) != 1:
        raise ValueError(f"hook {hook!r} names {len(names)} hook points; give one full name such as 'blocks.6.hook_resid_post'")
    return names[0]


def _hook_width(model, name: str) -> int | None:
    """Last-dimension width of a hook's activations, for the hooks whose width the config tells."""
    from steerlens.hooks import hook_kind

    cfg = model.cfg
    kind = hook_kind(name)
    if kind in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out") or name in ("hook_embed", "embed.hook_out"):
        return int(cfg.d_model)
    if kind in ("mlp_pre", "mlp_post"):
        return int(cfg.d_mlp)
    return None


def _params(probe: _LinearProbe) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in probe.get_params().items()}
