"""``Activations``: pooled hook tensors plus per-prompt rows, stored as safetensors shards + JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from steerlens.hooks import hook_kind, hook_layer
from steerlens.io import atomic_path, occupied, open_safetensors, save_tensors, write_text

FORMAT = "steerlens.activations"
VERSION = 1
MANIFEST = "manifest.json"


class Activations:
    """``{hook: tensor[n, d]}`` (``[total_tokens, d]`` when ``pool="all"``, see ``offsets``),
    per-prompt ``rows`` (prompt text, label, anything else) and ``info`` about the run.

    Tensors loaded from disk are read lazily, one hook at a time.
    """

    def __init__(
        self,
        tensors: Mapping[str, torch.Tensor],
        rows: Sequence[dict],
        *,
        lengths: Sequence[int] | torch.Tensor,
        pool: str,
        info: dict | None = None,
    ):
        self._tensors = tensors
        self.rows = list(rows)
        self.lengths = torch.as_tensor(lengths, dtype=torch.long)
        self.pool = pool
        self.info = dict(info or {})
        if len(self.lengths) != len(self.rows):
            raise ValueError(f"{len(self.rows)} rows but {len(self.lengths)} lengths")

    # -- selection ---------------------------------------------------------------------------
    @property
    def hooks(self) -> list[str]:
        return list(self._tensors)

    @property
    def layers(self) -> list[int]:
        return sorted({hook_layer(h) for h in self.hooks if hook_layer(h) is not None})

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, hook: str) -> bool:
        return hook in self._tensors

    def __getitem__(self, hook: str) -> Float[torch.Tensor, "n d"]:
        if hook not in self._tensors:
            raise KeyError(f"no activations for hook {hook!r}; captured: {self.hooks}")
        return self._tensors[hook]

    def __iter__(self) -> Iterator[str]:
        return iter(self.hooks)

    def at(self, layer: int, kind: str | None = None) -> Float[torch.Tensor, "n d"]:
        """The tensor of the hook at block ``layer`` (of shorthand ``kind`` if several)."""
        matches = [h for h in self.hooks if hook_layer(h) == layer and kind in (None, hook_kind(h))]
        if len(matches) != 1:
            found = [h for h in self.hooks if hook_layer(h) == layer]
            raise KeyError(f"layer {layer}, kind {kind!r}: expected one hook, found {found}")
        return self[matches[0]]

    def select(self, hooks: Sequence[str] | None = None, layers: Sequence[int] | None = None) -> "Activations":
        keep = [
            h for h in self.hooks
            if (hooks is None or h in hooks or hook_kind(h) in hooks)
            and (layers is None or hook_layer(h) in layers)
        ]
        if not keep:
            raise KeyError(f"nothing matches hooks={hooks}, layers={layers}; captured: {self.hooks}")
        return Activations({h: self[h] for h in keep}, self.rows, lengths=self.lengths, pool=self.pool, info=self.info)

    # -- conversion --------------------------------------------------------------------------
    @property
    def labels(self) -> np.ndarray:
        if not self.rows or "label" not in self.rows[0]:
            raise KeyError("these activations carry no labels (pass labels= to capture)")
        return np.asarray([r["label"] for r in self.rows])

    def numpy(self, hook: str) -> np.ndarray:
        """float32 numpy array for scikit-learn."""
        return self[hook].float().numpy()

    @property
    def offsets(self) -> torch.Tensor:
        """``[n + 1]`` row offsets of each prompt's tokens when ``pool="all"``."""
        if self.pool != "all":
            raise ValueError(f"offsets exist only for pool='all' (this is pool={self.pool!r})")
        return torch.cat([torch.zeros(1, dtype=torch.long), self.lengths.cumsum(0)])

    def tokens(self, hook: str, i: int) -> Float[torch.Tensor, "pos d"]:
        """All token activations of prompt ``i`` (``pool="all"``)."""
        o = self.offsets
        return self[hook][o[i] : o[i + 1]]

    def __repr__(self) -> str:
        return f"Activations(n={len(self)}, pool={self.pool!r}, hooks={self.hooks})"

    # -- storage -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``path/`` (one shard + ``manifest.json``) atomically. An existing activations
        directory is replaced only with ``overwrite=True``; anything else there is never touched."""
        with ShardWriter(path, overwrite=overwrite) as w:
            w.add({h: self[h] for h in self.hooks})
            w.finish(self.rows, self.lengths, pool=self.pool, info=self.info)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Activations":
        """Read a directory written by ``save`` or ``capture(out=...)``; tensors load lazily."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{path} holds no {MANIFEST}: not a complete steerlens activations directory")
        m = _read_manifest(manifest_path)
        version = m.get("version", 0)
        if m.get("format") != FORMAT or not isinstance(version, int) or version > VERSION:
            raise ValueError(f"{path}: unsupported format {m.get('format')!r} version {m.get('version')}")
        _check_manifest(m, manifest_path)
        n = sum(m["lengths"]) if m["pool"] == "all" else len(m["rows"])
        tensors = _ShardedTensors(path, [path / s for s in m["shards"]], m["hooks"], n)
        return cls(tensors, m["rows"], lengths=m["lengths"], pool=m["pool"], info=m["info"])


def _read_manifest(path: Path) -> dict:
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to be a manifest") from None
    if not isinstance(m, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(m).__name__}")
    return m


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**62


_FIELDS = {  # manifest key -> (check, what it must be)
    "hooks": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "shards": (lambda v: isinstance(v, list) and v and all(isinstance(x, str) for x in v),
               "a non-empty list of strings"),
    "lengths": (lambda v: isinstance(v, list) and all(_is_count(x) for x in v), "a list of non-negative ints"),
    "rows": (lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v), "a list of objects"),
    "pool": (lambda v: isinstance(v, str), "a string"),
    "info": (lambda v: isinstance(v, dict), "an object"),
}


def _check_manifest(m: dict, manifest_path: Path) -> None:
    for key, (ok, what) in _FIELDS.items():
        if key not in m or not ok(m[key]):
            raise ValueError(f"{manifest_path}: {key!r} must be {what}, got {m.get(key)!r:.80}")
    root = manifest_path.parent.resolve()
    for s in m["shards"]:
        if Path(s).is_absolute() or ".." in Path(s).parts or not (root / s).resolve().is_relative_to(root):
            raise ValueError(f"{manifest_path}: shard {s!r} is outside the activations directory")


def _check_replaceable(path: Path, overwrite: bool) -> None:
    """Refuse to write at ``path`` unless nothing (or an empty directory) is there, or it is an
    activations directory and ``overwrite`` is set."""
    if not occupied(path):
        return
    if not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite on the CLI) to replace it")
    if not _is_activations_dir(path):
        raise ValueError(f"{path} is not a steerlens activations directory, so it will not be replaced")


def _is_activations_dir(path: Path) -> bool:
    """A real directory holding a steerlens ``manifest.json`` and nothing but the files it lists."""
    if path.is_symlink() or not path.is_dir() or not (path / MANIFEST).is_file():
        return False
    try:
        m = _read_manifest(path / MANIFEST)
    except (ValueError, OSError):
        return False
    shards = m.get("shards")
    if m.get("format") != FORMAT or not isinstance(shards, list):
        return False
    allowed = {MANIFEST} | {s for s in shards if isinstance(s, str)}
    return all(p.name in allowed and p.is_file() and not p.is_symlink() for p in path.iterdir())


class _ShardedTensors(Mapping):
    """Reads one hook's rows from every shard on access (and keeps it); the shards' rows must add
    up to ``n``."""

    def __init__(self, root: Path, shards: list[Path], hooks: list[str], n: int):
        self._root, self._shards, self._hooks, self._n, self._cache = root, shards, hooks, n, {}

    def __getitem__(self, hook: str) -> torch.Tensor:
        if hook not in self._hooks:
            raise KeyError(hook)
        if hook not in self._cache:
            parts = [self._read(shard, hook) for shard in self._shards]
            for shard, p in zip(self._shards, parts):
                if p.ndim != 2 or p.shape[1:] != parts[0].shape[1:]:
                    raise ValueError(f"shard {shard}: hook {hook!r} has shape {tuple(p.shape)}, expected "
                                     f"[rows, {parts[0].shape[-1] if parts[0].ndim else '?'}] like the first shard")
            got = sum(p.shape[0] for p in parts)
            if got != self._n:
                raise ValueError(
                    f"{self._root}: hook {hook!r} has {got} rows in its shards, the manifest says {self._n}"
                )
            self._cache[hook] = torch.cat(parts)
        return self._cache[hook]

    @staticmethod
    def _read(shard: Path, hook: str) -> torch.Tensor:
        if not shard.is_file():
            raise ValueError(f"shard {shard} is missing")
        with open_safetensors(shard) as f:
            if hook not in f.keys():
                raise ValueError(f"shard {shard} holds no tensor for hook {hook!r}")
            t = f.get_tensor(hook)
        if t.ndim == 0:
            raise ValueError(f"shard {shard}: hook {hook!r} is a scalar, expected [rows, d]")
        return t

    def __iter__(self) -> Iterator[str]:
        return iter(self._hooks)

    def __len__(self) -> int:
        return len(self._hooks)


class ShardWriter:
    """Write an activations directory shard by shard; it appears only when ``finish`` ran.

    Use as a context manager: on an exception nothing is left at ``path``. What may already be
    at ``path`` (``overwrite``) is as for ``Activations.save``, checked on entering.
    """

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False):
        self.path = Path(path)
        self.overwrite = overwrite
        self._shards: list[str] = []
        self._hooks: list[str] | None = None
        self._finished = False

    def __enter__(self) -> "ShardWriter":
        """Check that ``path`` may be written (see ``Activations.save``), then start writing."""
        check = partial(_check_replaceable, overwrite=self.overwrite)
        self._ctx = atomic_path(self.path, directory=True, check=check)
        self._tmp = self._ctx.__enter__()
        return self

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        if self._hooks is None:
            self._hooks = list(tensors)
        name = f"shard-{len(self._shards):05d}.safetensors"
        save_tensors(self._tmp / name, tensors, {})
        self._shards.append(name)

    def finish(self, rows: Sequence[dict], lengths: torch.Tensor | Sequence[int], *, pool: str, info: dict[str, Any]) -> None:
        manifest = {
            "format": FORMAT, "version": VERSION, "hooks": self._hooks or [], "pool": pool,
            "shards": self._shards, "lengths": torch.as_tensor(lengths).tolist(),
            "rows": list(rows), "info": info,
        }
        write_text(self._tmp / MANIFEST, json.dumps(manifest, default=str))
        self._finished = True

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None and not self._finished:
            exc = RuntimeError("ShardWriter closed without finish(): nothing was written")
            self._ctx.__exit__(type(exc), exc, None)
            raise exc
        return bool(self._ctx.__exit__(exc_type, exc, tb))
