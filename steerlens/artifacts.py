"""The artifact layer: every steerlens file of tensors (steering vectors, concept erasers, probes,
key statistics) is one safetensors file whose JSON metadata says what it is (format name and
version) and where it came from (model name and fingerprint, hook, layers, method, dataset and
its hash, creation time), written atomically and checked on load.

    meta = Meta("steerlens.steering_vector", 1, hook="resid_post", layers=[6], d_model=640)
    save("v.safetensors", {"layer.6": v}, meta)
    tensors, raw = load("v.safetensors", "steerlens.steering_vector", max_version=1)
    check_compatible(model, Meta.from_dict(raw), "vector")  # width, layers, fingerprint

Every load error is a ``ValueError`` naming the file (a missing file ``FileNotFoundError``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def now() -> str:
    """The current UTC time, ISO 8601 to the second: the ``created`` of a new artifact."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclasses.dataclass(frozen=True)
class Meta:
    """The metadata record of an artifact; ``to_dict()`` gives its file metadata keys.

    ``d_model`` is the width of the tensors at ``hook`` (the residual width for residual hooks,
    ``d_mlp`` for ``mlp_post``); ``None`` fields are not checked by ``check_compatible``.
    """

    format: str
    version: int
    hook: str | None = None
    layers: list[int] | None = None
    d_model: int | None = None
    method: str | None = None
    model_name: str | None = None
    fingerprint: str | None = None
    dataset: str | None = None
    dataset_hash: str | None = None
    created: str | None = dataclasses.field(default_factory=now)
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["info"] = dict(self.info)
        return out

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any]) -> "Meta":
        """The record's keys of ``meta`` (other keys are left out; missing ones take defaults)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in meta.items() if k in names})


# -- metadata value checks ------------------------------------------------------------------------
#: a metadata value check: (predicate, what is allowed)
Check = tuple[Callable[[Any], bool], str]


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


STR: Check = (lambda v: isinstance(v, str), "a string")
OPT_STR: Check = (lambda v: v is None or isinstance(v, str), "a string or null")
POS_INT: Check = (lambda v: _is_int(v) and v > 0, "a positive integer")
OPT_INT: Check = (lambda v: v is None or _is_int(v), "an integer or null")
OPT_NUMBER: Check = (lambda v: v is None or isinstance(v, float) or _is_int(v) and abs(v) <= sys.float_info.max,
                     "a number or null")  # JSON integers are unbounded: 10**400 is no float
DICT: Check = (lambda v: isinstance(v, dict), "a JSON object")
OPT_DICT: Check = (lambda v: v is None or isinstance(v, dict), "a JSON object or null")
LAYERS: Check = (lambda v: isinstance(v, list) and bool(v) and all(_is_int(x) and x >= 0 for x in v)
                 and len(set(v)) == len(v), "a non-empty list of distinct non-negative integers")
#: the checks of ``Meta``'s keys as vector and eraser files hold them
PROVENANCE: dict[str, Check] = {
    "hook": STR, "layers": LAYERS, "d_model": POS_INT, "method": STR, "model_name": OPT_STR,
    "fingerprint": OPT_STR, "dataset": OPT_STR, "dataset_hash": OPT_STR, "created": OPT_STR, "info": DICT,
}


# -- save and load --------------------------------------------------------------------------------
def save(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], meta: Meta | Mapping[str, Any]) -> Path:
    """Write ``tensors`` and ``meta`` (a ``Meta`` or a mapping with at least ``format`` and
    ``version``; values JSON-encoded) to the safetensors file ``path`` atomically."""
    from steerlens.io import save_tensors

    meta = meta.to_dict() if isinstance(meta, Meta) else dict(meta)
    if not isinstance(meta.get("format"), str) or not POS_INT[0](meta.get("version")):
        raise ValueError(f"artifact metadata needs a string 'format' and a positive integer 'version', "
                         f"got {meta.get('format')!r} and {meta.get('version')!r}")
    save_tensors(path, dict(tensors), meta)
    return Path(path)


def load(path: str | os.PathLike, format: str, max_version: int, *, what: str | None = None,
         fields: Mapping[str, Check] = PROVENANCE, required: Sequence[str] = ()) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of a steerlens safetensors file, checked to be a ``what`` (default:
    from the format name) of ``format``, version ``max_version`` or older, whose metadata has the
    ``required`` keys and values that pass ``fields``; else a ``ValueError`` naming the file."""
    from steerlens.io import load_tensors

    what = what or format.removeprefix("steerlens.").replace("_", " ")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        tensors, meta = load_tensors(path)
    except ValueError as e:  # truncated, not safetensors, metadata not JSON (e.g. HF weights' {"format": "pt"})
        raise ValueError(f"{path} is not a readable steerlens {what}: {str(e).removeprefix(f'{path}: ')}") from None
    except RecursionError:  # json.loads of a metadata value nested thousands deep
        raise ValueError(f"{path} is not a readable steerlens {what}: its metadata is nested too deeply") from None
    if meta.get("format") != format:
        raise ValueError(f"{path} is not a steerlens {what} (metadata format {meta.get('format')!r}, expected {format!r})")
    missing = [k for k in required if k not in meta]
    if missing:
        raise ValueError(f"{path}: the {what} metadata lacks {missing}")
    for key, (ok, allowed) in {"version": POS_INT, **fields}.items():
        if key in meta and not ok(meta[key]):
            raise ValueError(f"{path}: metadata {key!r} must be {allowed}, got {meta[key]!r}")
    if meta.get("version", 0) > max_version:
        raise ValueError(f"{path} has format version {meta['version']}; this steerlens reads <= {max_version}")
    return tensors, meta


def check_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                  shapes: Mapping[str, tuple[int | None, ...]], source: str) -> None:
    """Raise ``ValueError`` naming ``path`` unless it holds exactly the tensors in ``shapes``, each
    of that shape (``None``: any size); ``source`` says what in the metadata implies them."""
    missing, extra = sorted(set(shapes) - set(tensors)), sorted(set(tensors) - set(shapes))
    if missing or extra:
        raise ValueError(f"{path}: the tensors do not match {source}: missing {missing}, unexpected {extra}")
    for name, shape in shapes.items():
        got = tuple(tensors[name].shape)
        if len(got) != len(shape) or any(s is not None and g != s for g, s in zip(got, shape)):
            want = tuple("any" if s is None else s for s in shape)
            raise ValueError(f"{path}: tensor {name!r} has shape {got}, but {source} needs {want}")


@contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise the ``ValueError``/``TypeError`` of building an object from a file as a ``ValueError`` naming it."""
    try:
        yield
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from None


# -- model compatibility --------------------------------------------------------------------------
def hook_width(model: "TransformerBridge", hook: str) -> int | None:
    """The last-dimension width of ``hook``'s activations (a full name or a shorthand) where the
    config tells it (residual, attention/MLP outputs, MLP hidden), else ``None``."""
    site = _width_key(hook)
    return None if site is None else int(getattr(model.cfg, site))


def _width_key(hook: str) -> str | None:
    """The config key of ``hook``'s width (``"d_model"``, ``"d_mlp"``) or ``None``."""
    from steerlens.hooks import hook_kind

    kind = hook_kind(hook)
    if kind in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out") or hook in ("hook_embed", "embed.hook_out"):
        return "d_model"
    if kind in ("mlp_pre", "mlp_post"):
        return "d_mlp"
    return None


def check_compatible(model: "TransformerBridge", artifact: Any, what: str, *, force: bool = False) -> None:
    """Raise ``ValueError`` when ``artifact`` (a ``Meta``, or anything with its attributes ``d_model``,
    ``layers``, ``hook``, ``model_name``, ``fingerprint``, e.g. a ``SteeringVector``) does not fit
    ``model``: another width at its hook, a layer the model lacks, or (unless ``force``, which then
    warns) another fingerprint. ``None`` attributes are not checked; ``what`` names it in the messages."""
    from steerlens.models import fingerprint, model_name

    width, layers, hook = (getattr(artifact, k, None) for k in ("d_model", "layers", "hook"))
    recorded, made_on = getattr(artifact, "fingerprint", None), getattr(artifact, "model_name", None)
    if width is not None:
        key = "d_model" if hook is None else _width_key(hook)
        expect = None if key is None else int(getattr(model.cfg, key))
        if expect is not None and width != expect:
            site = f" at {hook!r}" if hook is not None else ""
            raise ValueError(f"the {what} has width {width} (it does not match {key} {expect} of "
                             f"{model_name(model)}{site}): it was made on another model ({made_on!r})")
    n_layers = int(model.cfg.n_layers)
    bad = [layer for layer in layers or () if layer >= n_layers]
    if bad:
        raise ValueError(f"the {what} has layers {bad}, but the model has {n_layers} layers (0..{n_layers - 1})")
    if not recorded:
        return
    fp = fingerprint(model)
    if fp != recorded:
        msg = (f"the {what} was computed on {made_on!r} (fingerprint {recorded}); "
               f"this model is {model_name(model)!r} (fingerprint {fp})")
        if not force:
            raise ValueError(f"{msg}. Pass force=True to use it anyway.")
        warnings.warn(f"{msg}; used anyway (force=True)", stacklevel=3)
