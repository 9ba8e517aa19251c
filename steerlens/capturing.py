"""``capture``: record pooled hook activations over prompts, batched, padding-aware, stopping the
forward pass after the deepest requested hook."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch

from steerlens.activations import Activations, ShardWriter
from steerlens.hooks import Layers, resolve_hooks
from steerlens.forward import stop
from steerlens.models import fingerprint, model_name
from steerlens.steps import intervene
from steerlens.tokens import check_prompts, tokenize

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

Pool = Literal["last", "mean", "all"]
#: per prompt: a token index (negative counts back from the last real token) or a span (start, end)
Position = int | tuple[int, int]


def capture(
    model: "TransformerBridge",
    prompts: Sequence[str],
    hooks: str | Sequence[str],
    *,
    layers: Layers = None,
    pool: Pool | Sequence[Position] = "last",
    labels: Sequence[Any] | None = None,
    rows: Sequence[dict] | None = None,
    batch_size: int = 16,
    dtype: torch.dtype = torch.float32,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Activations:
    """Run ``prompts`` through ``model`` and keep each requested hook's activation, pooled.

    ``hooks``: full names (``"blocks.6.hook_resid_post"``) or shorthands (``"resid_post"``,
    expanded over ``layers``, default every layer). ``pool``: ``"last"`` real token, ``"mean"``
    over real tokens, ``"all"`` tokens (concatenated; see ``Activations.offsets``), or one
    position per prompt (an int, negative from the end, or a ``(start, end)`` span averaged).
    The default is ``"last"`` because in a causal model the last real token is the only one that
    has read the whole prompt and the one that predicts what follows (what statement probes and
    per-token monitors read); ``steer.compute`` pools sentence pairs with ``"mean"`` instead. The
    pooling is recorded (``acts.pool``) and travels into vectors and probes fitted on it, which
    are then used with it (docs: core, "Pooling: one rule").
    Prompts are right-padded internally, so batched results equal one-at-a-time runs.
    With ``out``, shards stream to that directory (memory bounded by one batch) and the
    returned ``Activations`` reads them lazily; the directory appears only once complete.
    An existing ``out`` is refused before any forward pass unless it is an empty directory, or
    an activations directory and ``overwrite=True``; nothing else is ever replaced.
    """
    prompts = check_prompts(prompts)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype (e.g. torch.float32), got {dtype!r}")
    names = resolve_hooks(model, hooks, layers)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    positions = _check_pool(pool, len(prompts))
    rows = _rows(prompts, labels, rows)
    pool_name = pool if isinstance(pool, str) else "positions"
    info = {"model": model_name(model), "fingerprint": fingerprint(model), "hooks": names, "pool": pool_name}

    if out is None:
        parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        lengths = _run(model, prompts, names, pool, positions, batch_size, dtype, progress,
                       lambda acts: [parts[n].append(acts[n]) for n in names])
        return Activations({n: torch.cat(parts[n]) for n in names}, rows, lengths=lengths, pool=pool_name, info=info)
    with ShardWriter(out, overwrite=overwrite) as writer:  # checks ``out`` before the forward passes
        lengths = _run(model, prompts, names, pool, positions, batch_size, dtype, progress, writer.add)
        writer.finish(rows, lengths, pool=pool_name, info=info)
    return Activations.load(out)


def _run(model, prompts, names, pool, positions, batch_size, dtype, progress, sink) -> torch.Tensor:
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    all_lengths = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="capture", unit="batch", disable=not progress):
        batch = prompts[start : start + batch_size]
        input_ids, mask, lengths = tokenize(model, batch, padding_side="right")
        pos = None if positions is None else positions[start : start + batch_size]
        if pos is not None:
            _check_positions(pos, lengths, start)
        got: dict[str, torch.Tensor] = {}

        def make_hook(name: str):
            def hook(x: torch.Tensor, step: Any) -> torch.Tensor:
                got[name] = _pool(_as_bsd(x, name, input_ids.shape[1]), pool, pos, lengths).to("cpu", dtype)
                if len(got) == len(names):  # deepest requested hook: skip the rest of the model
                    stop(x)
                return x

            return hook

        with torch.inference_mode(), intervene(model, {n: make_hook(n) for n in names}):
            model(input_ids.to(device), attention_mask=mask.to(device), return_type=None)
        missing = [n for n in names if n not in got]
        if missing:
            raise RuntimeError(f"hooks {missing} did not fire during the forward pass")
        sink({n: got[n] for n in names})
        all_lengths.append(lengths)
    return torch.cat(all_lengths)


def _as_bsd(x: torch.Tensor, name: str, seq: int) -> torch.Tensor:
    """``[batch, pos, ...]`` -> ``[batch, pos, d]``; other layouts are refused."""
    if x.ndim < 3 or x.shape[1] != seq or "pattern" in name or "attn_scores" in name:
        raise ValueError(
            f"capture needs hooks shaped [batch, pos, ...]; {name!r} gives {tuple(x.shape)}. "
            "Use model.run_with_cache for attention patterns."
        )
    return x.reshape(x.shape[0], seq, -1)


def _pool(x: torch.Tensor, pool, positions, lengths: torch.Tensor) -> torch.Tensor:
    """Pool ``x [batch, pos, d]`` (right-padded, ``lengths`` real tokens per row)."""
    lengths = lengths.to(x.device)
    rows = torch.arange(x.shape[0], device=x.device)
    if positions is not None:
        out = []
        for i, p in enumerate(positions):
            if isinstance(p, int):
                out.append(x[i, p % int(lengths[i])])
            else:
                out.append(x[i, p[0] : p[1]].mean(0))
        return torch.stack(out)
    if pool == "last":
        return x[rows, lengths - 1]
    real = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None])
    if pool == "mean":
        return (x * real[..., None]).sum(1) / lengths[:, None].to(x.dtype)
    return x[real]  # "all": row-major, so prompts stay contiguous and in order


def _check_pool(pool, n: int) -> list[Position] | None:
    if isinstance(pool, str):
        if pool not in ("last", "mean", "all"):
            raise ValueError(f"pool must be 'last', 'mean', 'all' or a list of positions, got {pool!r}")
        return None
    positions = list(pool)
    if len(positions) != n:
        raise ValueError(f"pool has {len(positions)} positions for {n} prompts")
    for i, p in enumerate(positions):
        ok_int = isinstance(p, int) and not isinstance(p, bool)
        ok_span = isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(v, int) for v in p)
        if not (ok_int or ok_span):
            raise TypeError(f"pool[{i}] = {p!r}: expected an int or a (start, end) pair")
    return [p if isinstance(p, int) else (int(p[0]), int(p[1])) for p in positions]


def _check_positions(positions: list[Position], lengths: torch.Tensor, offset: int) -> None:
    for i, (p, n) in enumerate(zip(positions, lengths.tolist())):
        if isinstance(p, int) and not -n <= p < n:
            raise ValueError(f"pool[{offset + i}] = {p} is outside prompt {offset + i} ({n} tokens)")
        if isinstance(p, tuple) and not 0 <= p[0] < p[1] <= n:
            raise ValueError(f"pool[{offset + i}] = {p} is not a span inside prompt {offset + i} ({n} tokens)")


def _rows(prompts: list[str], labels, rows) -> list[dict]:
    n = len(prompts)
    if rows is not None and len(rows) != n:
        raise ValueError(f"rows has {len(rows)} entries for {n} prompts")
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries for {n} prompts")
    out = [dict(r) for r in rows] if rows is not None else [{} for _ in prompts]
    for i, r in enumerate(out):
        r.setdefault("prompt", prompts[i])
        if labels is not None:
            r["label"] = labels[i].item() if hasattr(labels[i], "item") else labels[i]
    return out
