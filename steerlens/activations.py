"""``Activations``: pooled hook tensors plus per-prompt rows, stored as safetensors shards + JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from steerlens.hooks import hook_kind, hook_layer
from steerlens.io import atomic_path, save_tensors

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
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path/`` (one shard + ``manifest.json``) atomically."""
        with ShardWriter(path) as w:
            w.add({h: self[h] for h in self.hooks})
            w.finish(self.rows, self.lengths, pool=self.pool, info=self.info)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Activations":
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{path} holds no {MANIFEST}: not a complete steerlens activations directory")
        m = json.loads(manifest_path.read_text())
        if m.get("format") != FORMAT or m.get("version", 0) > VERSION:
            raise ValueError(f"{path}: unsupported format {m.get('format')!r} version {m.get('version')}")
        shards = [path / s for s in m["shards"]]
        return cls(_ShardedTensors(shards, m["hooks"]), m["rows"], lengths=m["lengths"], pool=m["pool"], info=m["info"])


class _ShardedTensors(Mapping):
    """Reads one hook's rows from every shard on access (and keeps it)."""

    def __init__(self, shards: list[Path], hooks: list[str]):
        self._shards, self._hooks, self._cache = shards, hooks, {}

    def __getitem__(self, hook: str) -> torch.Tensor:
        if hook not in self._hooks:
            raise KeyError(hook)
        if hook not in self._cache:
            from safetensors import safe_open

            parts = []
            for shard in self._shards:
                with safe_open(str(shard), framework="pt") as f:
                    parts.append(f.get_tensor(hook))
            self._cache[hook] = torch.cat(parts)
        return self._cache[hook]

    def __iter__(self) -> Iterator[str]:
        return iter(self._hooks)

    def __len__(self) -> int:
        return len(self._hooks)


class ShardWriter:
    """Write an activations directory shard by shard; it appears only when ``finish`` ran.

    Use as a context manager: on an exception nothing is left at ``path``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._shards: list[str] = []
        self._hooks: list[str] | None = None
        self._finished = False

    def __enter__(self) -> "ShardWriter":
        self._ctx = atomic_path(self.path, directory=True)
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
        (self._tmp / MANIFEST).write_text(json.dumps(manifest, default=str))
        self._finished = True

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None and not self._finished:
            exc = RuntimeError("ShardWriter closed without finish(): nothing was written")
            self._ctx.__exit__(type(exc), exc, None)
            raise exc
        return bool(self._ctx.__exit__(exc_type, exc, tb))
