"""The serving engine: one thread owns the model and decodes every request with
iteration-level (continuous) batching.

Each loop iteration (1) drops rows whose request finished, was cancelled or timed out, (2) admits
waiting requests, prefilling them as one left-padded batch and joining their KV cache to the
running batch (``steerlens.kvcache``), and (3) runs one decode step for every running row. A row
carries its own steering entries, probe monitors, sampling parameters and ``torch.Generator``;
each forward call steers and monitors exactly the rows that asked, through the core hook
dispatcher (``steerlens.steps``), so no request touches the model or a hook directly.

A request run alone and inside a busy batch gets the same tokens: rows never see each other's
padding (masked, position ids from ``cumsum(mask) - 1``), each row samples from its own
generator, and steering is applied per row. ``mode="static"`` (wait up to ``batch_window``
seconds, then run a batch to completion) and ``max_batch=1`` (sequential) exist to measure what
continuous batching buys (``benchmarks/bench_serving.py``).

Why not transformers' own continuous batching (``generate_batch`` / ``ContinuousBatchingManager``,
5.23): it packs all sequences into one ``[1, tokens]`` row for paged attention, so a hook cannot
tell which request a position belongs to without the manager's internals; ``do_sample`` is one
setting per manager and draws with ``torch.multinomial`` from the global RNG, so a seeded request
cannot reproduce its own sample.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from steer.steering import Steering
from steer.vector import SteeringVector

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["Engine", "Finish", "Job", "QueueFull", "Sampling", "SteerEntry", "Token", "Failure"]


@dataclass(frozen=True)
class SteerEntry:
    """One steering instruction of a request, as plain data: ``vector`` applied with ``op`` and
    ``coeff`` at ``layers`` (``None``: the vector's own) on ``positions``."""

    vector: SteeringVector
    coeff: float | None = None
    layers: tuple[int, ...] | None = None
    op: str = "add"
    positions: Literal["all", "prompt", "generated"] = "all"


@dataclass(frozen=True)
class Sampling:
    """``temperature == 0``: greedy. ``logprobs``: how many alternatives to return per token
    (0: the chosen token's log-probability only; ``None``: none)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None


@dataclass(frozen=True)
class Token:
    """One generated token: its id, the text it releases (held back while it may begin a stop
    string), its log-probability and alternatives when asked, and the probe scores of the
    position that produced it."""

    id: int
    text: str
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Finish:
    reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Failure:
    """The request failed: ``status`` 400 for bad input found while running (steering that made
    the activations non-finite), 408 for a timeout, 500 for an engine error."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None


Event = Token | Finish | Failure


class QueueFull(Exception):
    """The waiting queue is full: try again later."""


_ids = itertools.count()


@dataclass
class Job:
    """One request inside the engine. ``emit`` receives its events from the engine thread."""

    prompt_ids: list[int]
    sampling: Sampling
    emit: Callable[[Event], Any]
    steering: tuple[SteerEntry, ...] = ()
    monitors: dict[str, tuple[str, Any]] = field(default_factory=dict)  # name -> (hook, probe)
    timeout: float | None = None
    id: int = field(default_factory=lambda: next(_ids))
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)

    def cancel(self) -> None:
        """Free the request's row at the next decode step (a client that went away)."""
        self.cancelled.set()

    def send(self, event: "Event") -> None:
        """``emit`` that never raises into the engine: a receiver that fails cancels the job."""
        try:
            self.emit(event)
        except Exception:
            self.cancelled.set()


class _Row:
    """A running request's decoding state (engine thread only)."""

    def __init__(self, job: Job, tokenizer: Any, stop_ids: set[int]):
        self.job = job
        s = job.sampling
        self.generator = None
        if s.temperature > 0:
            self.generator = torch.Generator(device="cpu")
            self.generator.manual_seed(s.seed if s.seed is not None else int(torch.randint(0, 2**62, (1,))))
        self.tokenizer, self.stop_ids = tokenizer, stop_ids
        self.tokens: list[int] = []
        self.sent = 0  # characters of the text already released
        self.done = False
        self.deadline = None if job.timeout is None else job.submitted + job.timeout

    def finish(self, event: Event) -> None:
        if not self.done:
            self.done = True
            self.job.send(event)

    def push(self, tok: int, logprob: float | None, top: tuple, scores: dict[str, float]) -> None:
        """Record the sampled token, release text, and finish on EOS, a stop string or length."""
        s = self.job.sampling
        n_prompt = len(self.job.prompt_ids)
        if tok in self.stop_ids:
            self.job.send(Token(tok, self._release(final=True), logprob, top, scores))
            self.finish(Finish("stop", n_prompt, len(self.tokens) + 1))
            return
        self.tokens.append(tok)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cut = _first_stop(text, s.stop, max(0, self.sent - max((len(x) for x in s.stop), default=0)))
        if cut is not None:
            self.job.send(Token(tok, text[self.sent : cut], logprob, top, scores))
            self.sent = cut
            self.finish(Finish("stop", n_prompt, len(self.tokens)))
            return
        final = len(self.tokens) >= s.max_tokens
        self.job.send(Token(tok, self._release(final, text), logprob, top, scores))
        if final:
            self.finish(Finish("length", n_prompt, len(self.tokens)))

    def _release(self, final: bool, text: str | None = None) -> str:
        if text is None:
            text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        end = len(text)
        if not final:
            end -= _held_back(text, self.job.sampling.stop)
        out, self.sent = text[self.sent : max(end, self.sent)], max(end, self.sent)
        return out


def _first_stop(text: str, stops: tuple[str, ...], start: int) -> int | None:
    hits = [i for i in (text.find(x, start) for x in stops) if i >= 0]
    return min(hits) if hits else None


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of ``text`` not to release yet: an incomplete UTF-8 character, or a
    suffix that could begin a stop string."""
    hold = 1 if text.endswith("\ufffd") else 0
    for x in stops:
        for k in range(min(len(x) - 1, len(text)), 0, -1):
            if text.endswith(x[:k]):
                hold = max(hold, k)
                break
    return hold


class Engine:
    """Owns ``model``; ``submit`` queues a ``Job`` and the engine thread runs it.

    ``max_batch`` rows decode together; ``max_queue`` requests may wait (``submit`` raises
    ``QueueFull`` beyond). ``mode``: ``"continuous"`` admits waiting requests at every decode
    step; ``"static"`` waits up to ``batch_window`` seconds to fill a batch, then runs it to the
    end before admitting more. ``on_step(kind, rows)`` is called after every forward call
    (``kind``: ``"prefill"`` or ``"decode"``), for metrics.
    """

    def __init__(self, model: "TransformerBridge", *, max_batch: int = 16, max_queue: int = 64,
                 mode: Literal["continuous", "static"] = "continuous", batch_window: float = 0.05,
                 on_step: Callable[[str, int], Any] | None = None):
        from steer.generation import stop_ids

        for name, v in (("max_batch", max_batch), ("max_queue", max_queue)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if mode not in ("continuous", "static"):
            raise ValueError(f"mode must be 'continuous' or 'static', got {mode!r}")
        if not isinstance(batch_window, (int, float)) or batch_window < 0:
            raise ValueError(f"batch_window must be a number of seconds >= 0, got {batch_window!r}")
        self.model, self.max_batch, self.mode, self.batch_window = model, max_batch, mode, float(batch_window)
        self.on_step = on_step
        self._waiting: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self._stop_ids = stop_ids(model)
        self._rows: list[_Row] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None
        self._last: torch.Tensor | None = None  # [rows] the token each row feeds next
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self._wake = threading.Event()
        self.device = next(model.parameters()).device
        #: counts since start: requests admitted, admitted while others were decoding (joined a
        #: running batch), cancelled rows freed, forward calls, and the most rows decoded at once
        self.stats = {"admitted": 0, "joined": 0, "cancelled": 0, "forwards": 0, "max_rows": 0}

    # -- public ------------------------------------------------------------------------------------
    @property
    def queue_length(self) -> int:
        return self._waiting.qsize()

    @property
    def running(self) -> int:
        return len(self._rows)

    def start(self) -> "Engine":
        if self._thread is None:
            self._running.set()
            self._thread = threading.Thread(target=self._loop, name="steerlens-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the engine thread; requests still queued or running fail with 503."""
        self._running.clear()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, job: Job) -> Job:
        if self._thread is None or not self._running.is_set():
            raise RuntimeError("the engine is not running: call start()")
        try:
            self._waiting.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self._waiting.maxsize} requests are already waiting") from None
        self._wake.set()
        return job

    def run(self, job_kwargs: dict[str, Any], timeout: float = 600.0) -> list[Event]:
        """Submit one request and wait for all its events (for scripts and tests)."""
        events: queue.Queue[Event] = queue.Queue()
        job = self.submit(Job(emit=events.put, **job_kwargs))
        out: list[Event] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                e = events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                job.cancel()
                raise TimeoutError(f"no answer from the engine in {timeout} s") from None
            out.append(e)
            if isinstance(e, (Finish, Failure)):
                return out

    # -- the loop ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        from steerlens.steps import intervene

        with intervene(self.model, {}):  # the engine is a user of the model (see steps.exclusive)
            while self._running.is_set():
                try:
                    self._drop_finished()
                    admitted = self._admit()
                    if self._rows:
                        self._decode()
                    elif not admitted:
                        self._wake.wait(0.05)
                        self._wake.clear()
                except Exception as e:  # an engine bug: fail the running rows, keep serving
                    self._fail_all(Failure(500, f"engine error: {type(e).__name__}: {e}", "server_error"))
            self._fail_all(Failure(503, "the server is shutting down", "server_error"))
            while True:
                try:
                    self._waiting.get_nowait().send(Failure(503, "the server is shutting down", "server_error"))
                except queue.Empty:
                    break

    def _fail_all(self, failure: Failure) -> None:
        for r in self._rows:
            r.finish(failure)
        self._rows, self._cache, self._mask, self._last = [], None, None, None

    def _drop_finished(self) -> None:
        from steerlens.kvcache import keep_rows, trim_padding

        now = time.monotonic()
        for r in self._rows:
            if r.job.cancelled.is_set() and not r.done:
                r.done = True
                self.stats["cancelled"] += 1
            elif r.deadline is not None and now > r.deadline:
                r.finish(Failure(408, f"the request took longer than its timeout of {r.job.timeout} s",
                                 "timeout_error", "timeout"))
        keep = [i for i, r in enumerate(self._rows) if not r.done]
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._rows, self._cache, self._mask, self._last = [], None, None, None
            return
        idx = torch.tensor(keep, device=self.device)
        self._mask = trim_padding(self._cache, keep_rows(self._cache, self._mask, idx))
        self._last = self._last[idx]
        self._rows = [self._rows[i] for i in keep]

    def _take_waiting(self, n: int) -> list[Job]:
        jobs: list[Job] = []
        while len(jobs) < n:
            try:
                job = self._waiting.get_nowait()
            except queue.Empty:
                break
            if job.cancelled.is_set():
                continue
            if job.timeout is not None and time.monotonic() > job.submitted + job.timeout:
                job.send(Failure(408, f"the request waited longer than its timeout of {job.timeout} s",
                                 "timeout_error", "timeout"))
                continue
            jobs.append(job)
        return jobs

    def _admit(self) -> bool:
        if self.mode == "static":
            if self._rows:
                return False
            if self._waiting.empty():
                return False
            end = time.monotonic() + self.batch_window
            while self._waiting.qsize() < self.max_batch and time.monotonic() < end and self._running.is_set():
                time.sleep(0.002)
        jobs = self._take_waiting(self.max_batch - len(self._rows))
        if not jobs:
            return False
        self._prefill(jobs)
        return True

    def _prefill(self, jobs: list[Job]) -> None:
        from transformers import DynamicCache

        from steerlens.kvcache import join
        from steerlens.tokens import pad, pad_id

        rows = [_Row(j, self.model.tokenizer, self._stop_ids) for j in jobs]
        self.stats["admitted"] += len(rows)
        self.stats["joined"] += len(rows) if self._rows else 0
        ids, mask = pad([j.prompt_ids for j in jobs], pad_id(self.model), side="left")
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = DynamicCache(config=self.model.original_model.config)
        try:
            toks = self._forward(rows, ids, mask, cache, "prefill")
        except Exception as e:
            for r in rows:
                r.finish(Failure(500, f"engine error: {type(e).__name__}: {e}", "server_error"))
            return
        live = [i for i, r in enumerate(rows) if not r.done]
        if not live:
            return
        if len(live) < len(rows):
            from steerlens.kvcache import keep_rows

            idx = torch.tensor(live, device=self.device)
            mask, toks, rows = keep_rows(cache, mask, idx), toks[idx], [rows[i] for i in live]
        if self._rows:
            self._mask = join(self._cache, self._mask, cache, mask)
            self._last = torch.cat([self._last, toks])
            self._rows += rows
        else:
            self._cache, self._mask, self._last, self._rows = cache, mask, toks, rows

    def _decode(self) -> None:
        self._mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], 1)
        self._last = self._forward(self._rows, self._last[:, None], self._mask, self._cache, "decode")

    # -- one forward call: steering + monitors per row, then sampling per row ------------------------
    def _forward(self, rows: list[_Row], feed: torch.Tensor, mask: torch.Tensor, cache: Any, kind: str) -> torch.Tensor:
        from contextlib import ExitStack

        from steerlens.generation import step_logits
        from steerlens.steps import intervene

        B = len(rows)
        bad = torch.zeros(B, dtype=torch.bool)

        def flag(rows_bad: torch.Tensor) -> None:
            bad.__ior__(rows_bad)

        scores: dict[int, torch.Tensor] = {}
        with ExitStack() as stack, torch.inference_mode():
            stack.enter_context(intervene(self.model, self._monitor_hooks(rows, scores)))
            for s in self._steerings(rows, flag):
                stack.enter_context(s)
            logits = step_logits(self.model.original_model, feed, mask, cache)
        bad |= ~torch.isfinite(logits).all(-1).cpu()
        toks = self._sample(rows, logits)
        for i, r in enumerate(rows):
            if r.done:
                continue
            if bool(bad[i]):
                r.finish(Failure(400, "steering made this request's activations or logits non-finite: "
                                      "use a smaller coeff", "invalid_request_error", "nonfinite_activations"))
                continue
            lp, top = self._logprobs(r, logits[i], int(toks[i]))
            r.push(int(toks[i]), lp, top, {n: float(scores[id(p)][i]) for n, (_, p) in r.job.monitors.items()})
        self.stats["forwards"] += 1
        self.stats["max_rows"] = max(self.stats["max_rows"], B)
        if self.on_step is not None:
            self.on_step(kind, B)
        return toks

    def _steerings(self, rows: list[_Row], flag: Callable) -> Iterator[Steering]:
        """One ``Steering`` per (op, positions, layers) group of the rows' entries, with one vector
        and coefficient per row (``None``: that row is not in the group)."""
        groups: dict[tuple, dict[int, SteerEntry]] = {}
        for i, r in enumerate(rows):
            for k, e in enumerate(r.job.steering):
                layers = e.layers if e.layers is not None else tuple(e.vector.layers)
                g = groups.setdefault((e.op, e.positions, layers, e.vector.hook), {})
                while i in g:  # a row using one group twice: a second group of the same kind
                    g = groups.setdefault((e.op, e.positions, layers, e.vector.hook, k, id(g)), {})
                g[i] = e
        for key, members in groups.items():
            op, positions, layers = key[0], key[1], list(key[2])
            vectors = [members[i].vector if i in members else None for i in range(len(rows))]
            coeffs = [(members[i].coeff if members[i].coeff is not None else (members[i].vector.coeff or 1.0))
                      if i in members else 0.0 for i in range(len(rows))]
            if op == "ablate":
                coeffs = None
            yield Steering(self.model, vectors, coeff=coeffs, layers=layers, op=op, positions=positions,
                           on_nonfinite=flag)

    def _monitor_hooks(self, rows: list[_Row], scores: dict[int, torch.Tensor]) -> dict[str, list]:
        """Hooks scoring each requested probe at the last column (every row's newest token)."""
        probes: dict[int, tuple[str, Any]] = {}  # by probe object: a name may be re-registered mid-request
        for r in rows:
            for hook, probe in r.job.monitors.values():
                probes[id(probe)] = (hook, probe)
        hooks: dict[str, list] = {}
        for name, (hook, probe) in probes.items():
            w = torch.from_numpy(probe.coef_[0]).float()
            b = float(probe.intercept_[0])

            def fn(x: torch.Tensor, step: Any, name: int = name, w: torch.Tensor = w, b: float = b) -> None:
                h = x[:, -1].detach().reshape(x.shape[0], -1).float()
                scores[name] = torch.sigmoid(h @ w.to(h.device) + b).cpu()

            hooks.setdefault(hook, []).append(fn)
        return hooks

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> torch.Tensor:
        from steerlens.generation import next_tokens

        toks = logits.argmax(-1)
        for i, r in enumerate(rows):
            s = r.job.sampling
            if s.temperature > 0 and not r.done and bool(torch.isfinite(logits[i]).all()):
                toks[i] = next_tokens(logits[i : i + 1], do_sample=True, temperature=s.temperature,
                                      top_p=s.top_p, generators=[r.generator])[0]
        return toks

    @staticmethod
    def _logprobs(r: _Row, logits: torch.Tensor, tok: int) -> tuple[float | None, tuple]:
        k = r.job.sampling.logprobs
        if k is None:
            return None, ()
        lp = torch.log_softmax(logits.float(), -1)
        top = ()
        if k > 0:
            v, i = lp.topk(k)
            top = tuple(zip(i.tolist(), v.tolist()))
        return float(lp[tok]), top
