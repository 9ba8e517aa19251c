"""Per-forward-call step tracking, and the one hook dispatcher every intervention goes through.

Interventions (steering, monitors, erasers, capture) never add hooks to the model themselves:
``with intervene(model, {hook_name: fn}):`` makes ``fn(x, step)`` run at that hook point for the
forward calls made *in the current context* (thread or asyncio task) while the block is active.
``step`` (a ``Step``) says what the current forward call is: its batch, its cached length, which
columns are real tokens, each token's index in its row, and which columns are generated tokens.
Two threads steering one model therefore each see only their own steering.

Mechanism: per model, one dispatcher owns a forward pre-hook on the HF model (the step tracker)
and one transformer-lens hook per hook point in use. Both are reference-counted: added when the
first active block needs them, removed when the last one leaves (also after an exception), so a
model leaves every block with the hooks it came in with. Which blocks are active is held in a
``contextvars.ContextVar``; no per-call state lives on the model.

How a step is read from a forward call (``input_ids``/``inputs_embeds``, ``attention_mask`` and
the KV cache passed to the HF model):

- padding: a column whose ``attention_mask`` is 0 is not a real token;
- token index: ``cumsum(mask) - 1`` along the row, so a left-padded row counts from its first real
  token, and a decode step (one new column, the mask covering cache + new token) gets the index a
  full recompute gives it;
- prompt vs generated: the first call of a sequence (no KV cache) is the prompt; its padded width
  ``W`` is kept. Later calls with a cache, or without one but repeating the same ``W`` prompt
  columns (generation without the KV cache), continue it, and their columns ``>= W`` are
  generated tokens.
"""

from __future__ import annotations

import contextvars
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Int

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["Step", "current_step", "exclusive", "intervene"]


@dataclass(frozen=True)
class Step:
    """One forward call of the HF model, as the step tracker saw it."""

    batch: int
    seq: int  # columns fed in this call
    past: int  # columns already in the KV cache
    real: Bool[torch.Tensor, "batch seq"]  # the column holds a real token (not padding)
    index: Int[torch.Tensor, "batch seq"]  # token index among the row's real tokens (BOS = 0)
    generated: Bool[torch.Tensor, "batch seq"]  # the column holds a generated token
    prompt_len: Int[torch.Tensor, " batch"]  # real prompt tokens per row
    width: int  # padded prompt width W of the sequence
    new_sequence: bool  # this call starts a sequence: its tokens are the prompt


#: ``fn(x, step) -> x' | None`` (None: leave x as it is); ``step`` is None for a hook that fired
#: outside a forward call of the HF model (e.g. a submodule called directly)
HookFn = Callable[[torch.Tensor, "Step | None"], "torch.Tensor | None"]


@dataclass
class _Sequence:
    """What the tracker remembers between forward calls of one context (one per model)."""

    width: int | None = None
    prompt_ids: torch.Tensor | None = None
    prompt_len: torch.Tensor | None = None
    step: Step | None = None


@dataclass(frozen=True)
class _Frame:
    """One active ``intervene`` block: its model's dispatcher, its hooks by hook point."""

    dispatcher: "_Dispatcher"
    hooks: dict[int, list[HookFn]]  # id(HookPoint) -> fns
    seq: _Sequence = field(compare=False)


_ACTIVE: contextvars.ContextVar[tuple[_Frame, ...]] = contextvars.ContextVar("steerlens_active", default=())


class _Dispatcher:
    """The hooks steerlens keeps on one model while any block is active (reference-counted)."""

    def __init__(self, model: "TransformerBridge"):
        self.model = weakref.ref(model)
        self.lock = threading.Lock()
        self.users = 0
        self.pre_handle: Any = None
        self.points: dict[int, tuple[Any, Any, int]] = {}  # id(hp) -> (hp, LensHandle, count)
        self.exclusive: tuple[str, int] | None = None  # (what, thread) holding the model alone

    def acquire(self, points: list[Any]) -> None:
        model = self.model()
        with self.lock:
            if self.exclusive is not None and self.exclusive[1] != threading.get_ident():
                raise RuntimeError(f"the model is being changed by {self.exclusive[0]} in another thread: "
                                   "this call cannot run until it is done (weight edits are not isolated per caller)")
            if self.users == 0:
                self.pre_handle = model.original_model.register_forward_pre_hook(self._track, with_kwargs=True)
            self.users += 1
            for hp in points:
                key = id(hp)
                if key in self.points:
                    _, handle, n = self.points[key]
                    self.points[key] = (hp, handle, n + 1)
                else:
                    self.points[key] = (hp, hp.add_hook(self._make_dispatch(key), dir="fwd"), 1)

    def release(self, points: list[Any]) -> None:
        with self.lock:
            for hp in points:
                key = id(hp)
                hp, handle, n = self.points[key]
                if n > 1:
                    self.points[key] = (hp, handle, n - 1)
                    continue
                del self.points[key]
                handle.hook.remove()
                hp.fwd_hooks[:] = [h for h in hp.fwd_hooks if h is not handle]
            self.users -= 1
            if self.users == 0 and self.pre_handle is not None:
                self.pre_handle.remove()
                self.pre_handle = None

    def _frames(self) -> list[_Frame]:
        return [f for f in _ACTIVE.get() if f.dispatcher is self]

    def _make_dispatch(self, key: int):
        def dispatch(x: torch.Tensor, hook: Any = None) -> torch.Tensor:
            for frame in _ACTIVE.get():
                if frame.dispatcher is self:
                    for fn in frame.hooks.get(key, ()):
                        y = fn(x, frame.seq.step)
                        if y is not None:
                            x = y
            return x

        return dispatch

    def _track(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        frames = self._frames()
        if frames:
            seq = frames[0].seq
            seq.step = _read_step(seq, args, kwargs)


def _read_step(seq: _Sequence, args: tuple, kwargs: dict) -> Step:
    ids = kwargs.get("input_ids", args[0] if args else None)
    x = ids if ids is not None else kwargs.get("inputs_embeds")
    if x is None:
        raise RuntimeError("steerlens: cannot tell the batch shape of this forward call")
    batch, n = int(x.shape[0]), int(x.shape[1])
    cache = kwargs.get("past_key_values", kwargs.get("cache"))
    past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
    mask = kwargs.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.ndim != 2 or mask.shape[1] < n:
        mask = torch.ones(batch, past + n, dtype=torch.bool, device=x.device)
    mask = mask.bool()
    total = int(mask.shape[1])
    new = False
    if past == 0:
        same = (seq.width is not None and ids is not None and seq.prompt_ids is not None
                and ids.shape[0] == seq.prompt_ids.shape[0] and n > seq.width
                and torch.equal(ids[:, : seq.width], seq.prompt_ids))
        if not same:  # a new sequence: this call's tokens are its prompt
            new = True
            seq.width = n
            seq.prompt_ids = ids.clone() if ids is not None else None
            seq.prompt_len = mask[:, total - n :].sum(-1)
    elif seq.width is None:  # a cache built outside any block: treat it as the prompt
        seq.width = past
        seq.prompt_len = mask[:, : total - n].sum(-1)
    real = mask[:, total - n :]
    cols = torch.arange(total - n, total, device=mask.device)
    index = (mask.long().cumsum(-1) - 1)[:, total - n :]
    generated = real & (cols >= seq.width)[None, :]
    return Step(batch, n, past, real, index, generated, seq.prompt_len, seq.width, new)


_DISPATCHERS: "weakref.WeakKeyDictionary[Any, _Dispatcher]" = weakref.WeakKeyDictionary()
_DISPATCHERS_LOCK = threading.Lock()


def _dispatcher(model: "TransformerBridge") -> _Dispatcher:
    with _DISPATCHERS_LOCK:
        d = _DISPATCHERS.get(model)
        if d is None:
            d = _DISPATCHERS[model] = _Dispatcher(model)
        return d


def hook_point(model: "TransformerBridge", name: str) -> Any:
    """The transformer-lens ``HookPoint`` named ``name`` (an alias or a canonical name)."""
    try:
        return model.hook_dict[name]
    except KeyError:
        raise ValueError(f"unknown hook {name!r}: see model.hook_dict for the names") from None


@contextmanager
def intervene(model: "TransformerBridge", hooks: Mapping[str, HookFn | list[HookFn]]) -> Iterator[None]:
    """Run ``fn(x, step)`` at each named hook point for forward calls of this context while the
    block is active. Blocks nest (inner ones run after outer ones at the same hook point) and
    share the context's step tracker; the model's hooks are as before when the block is left."""
    d = _dispatcher(model)
    by_point: dict[int, list[HookFn]] = {}
    points: list[Any] = []
    for name, fns in hooks.items():
        hp = hook_point(model, name)
        if id(hp) not in by_point:
            points.append(hp)
        by_point.setdefault(id(hp), []).extend(fns if isinstance(fns, list) else [fns])
    outer = next((f for f in _ACTIVE.get() if f.dispatcher is d), None)
    frame = _Frame(d, by_point, outer.seq if outer is not None else _Sequence())
    d.acquire(points)
    try:
        token = _ACTIVE.set(_ACTIVE.get() + (frame,))
        try:
            yield
        finally:
            _ACTIVE.reset(token)
    finally:
        d.release(points)


@contextmanager
def exclusive(model: "TransformerBridge", what: str) -> Iterator[None]:
    """Hold ``model`` alone while ``what`` (e.g. a ROME edit) changes its weights for every caller:
    refuse (``RuntimeError``) while other contexts have blocks active, and make their new blocks
    refuse until this one is left. Weight edits cannot be isolated per caller, so they are
    serialised against everything steerlens runs on the model instead of corrupting it."""
    d = _dispatcher(model)
    with d.lock:
        mine = sum(1 for f in _ACTIVE.get() if f.dispatcher is d)
        if d.exclusive is not None:
            raise RuntimeError(f"{what}: the model is already being changed by {d.exclusive[0]}")
        if d.users - mine > 0:
            raise RuntimeError(f"{what} changes the weights for every caller, but {d.users - mine} steerlens "
                               "block(s) (steering, monitors, generation, capture) are running on this model "
                               "in other threads: wait for them to finish")
        d.exclusive = (what, threading.get_ident())
    try:
        yield
    finally:
        with d.lock:
            d.exclusive = None


def current_step(model: "TransformerBridge") -> Step | None:
    """The step of the last forward call this context made on ``model`` inside a block."""
    frame = next((f for f in _ACTIVE.get() if f.dispatcher is _DISPATCHERS.get(model)), None)
    return frame.seq.step if frame is not None else None
