"""``VLLMEngine``: the serving engine interface (``submit``/``start``/``stop``) on vLLM.

vLLM does the batching (continuous, paged KV cache, tensor/pipeline parallel); steerlens' worker
extension (``steer.serve.vllm_worker``) applies each request's steering to that request's rows.
The spec travels as plain data in ``SamplingParams.extra_args["steerlens"]``: per entry the
directions per layer (already resolved and checked by ``steer.inputs.plan``), coefficient, op
and positions. Prefix caching is turned off: a cached prefix computed under one request's
steering must never be reused by another (vLLM would skip the steered positions).

Probe monitors are not available on this engine (they need per-token activations back from the
workers); a request asking for them gets a 400.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import TYPE_CHECKING, Any

from steer.serve.engine import Failure, Finish, Job, QueueFull, Token

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

_ids = itertools.count()


def steering_payload(model: "TransformerBridge", entries: tuple) -> list[dict[str, Any]]:
    """Plain-data steering spec of a request's ``SteerEntry`` tuple (directions per layer as
    float lists), in the layer numbering of vLLM's decoder layers."""
    from steer.inputs import plan

    out = []
    for e in entries:
        if e.vector.hook not in ("resid_post",) and not e.vector.hook.endswith("hook_resid_post"):
            raise ValueError(f"the vLLM engine steers the residual stream after each block (resid_post); "
                             f"this vector was taken at {e.vector.hook!r}")
        p = plan(model, e.vector, coeff=e.coeff, layers=list(e.layers) if e.layers else None, op=e.op,
                 positions=e.positions)
        out.append({"op": e.op, "coeff": 0.0 if p.coeff is None else float(p.coeff), "positions": e.positions,
                    "dirs": {str(k): v.reshape(-1).tolist() for k, v in p.dirs.items()}})
    return out


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _cpu_cores_for_vllm() -> None:
    """On the CPU, vLLM reserves one core for its front end unless ``VLLM_CPU_NUM_OF_RESERVED_CPU``
    is set; on a machine of four cores or fewer that is a quarter of the compute or more (2 cores,
    16 clients, ``benchmarks/bench_serving.py --modes vllm``: 95 tokens/s with one core reserved,
    148 with none), so there steerlens reserves none. Set the variable to choose yourself."""
    import os

    if (os.cpu_count() or 1) <= 4:
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


class VLLMEngine:
    """The ``Engine`` interface on vLLM's ``AsyncLLM`` (its own event loop in a thread)."""

    supports_monitors = False

    def __init__(self, model: "TransformerBridge", checkpoint: str, *, max_batch: int = 16, max_queue: int = 64,
                 dtype: str = "float32", max_model_len: int | None = None, tensor_parallel_size: int = 1,
                 on_step: Any = None, **engine_kwargs: Any):
        self.model, self.checkpoint = model, checkpoint
        self.max_batch, self.max_queue = max_batch, max_queue
        self.engine_kwargs = dict(model=checkpoint, dtype=dtype, enforce_eager=True, enable_prefix_caching=False,
                                  max_num_seqs=max_batch, tensor_parallel_size=tensor_parallel_size,
                                  max_model_len=max_model_len or min(int(model.cfg.n_ctx), 4096),
                                  worker_extension_cls="steer.serve.vllm_worker.SteeringWorker", **engine_kwargs)
        if not _has_cuda():
            _cpu_cores_for_vllm()
            if "gpu_memory_utilization" not in engine_kwargs:
                # on CPU vLLM reserves 92% of the NUMA node's RAM by default; a fixed KV cache instead
                self.engine_kwargs.setdefault("kv_cache_memory_bytes", 1 << 30)
        self.stats = {"admitted": 0, "joined": 0, "cancelled": 0, "forwards": 0, "max_rows": 0}
        self._inflight = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._engine: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.workers = 0  # vLLM workers with steerlens' hooks, once started

    @property
    def queue_length(self) -> int:
        return max(0, self._inflight - self.max_batch)

    @property
    def running(self) -> int:
        return min(self._inflight, self.max_batch)

    def start(self, timeout: float = 1800.0) -> "VLLMEngine":
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run_loop, name="steerlens-vllm", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"vLLM did not start in {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"vLLM failed to start: {self._error}") from self._error
        return self

    def _run_loop(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._boot())
        except BaseException as e:  # reported by start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    async def _boot(self) -> None:
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        self._engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**self.engine_kwargs))
        installed = await self._engine.collective_rpc("steerlens_install")
        if not installed or not all(installed):
            raise RuntimeError(f"steerlens' steering hooks were not installed on vLLM's workers ({installed})")
        self.workers = len(installed)  # one entry per worker (tensor/pipeline parallel ranks)

    def stop(self, timeout: float = 60.0) -> None:
        if self._loop is None:
            return
        engine = self._engine

        def _shutdown() -> None:
            if engine is not None:
                engine.shutdown()
            self._loop.stop()

        self._loop.call_soon_threadsafe(_shutdown)
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = self._loop = self._engine = None

    def submit(self, job: Job) -> Job:
        if self._loop is None or self._engine is None:
            raise RuntimeError("the vLLM engine is not running: call start()")
        with self._lock:
            if self._inflight >= self.max_batch + self.max_queue:
                raise QueueFull(f"{self.max_queue} requests are already waiting")
            self._inflight += 1
        payload = steering_payload(self.model, job.steering) if job.steering else None
        asyncio.run_coroutine_threadsafe(self._generate(job, payload), self._loop)
        return job

    async def _generate(self, job: Job, payload: list | None) -> None:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = job.sampling
        rid = f"steerlens-{job.id}-{next(_ids)}"
        params = SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, seed=s.seed,
                                stop=list(s.stop) or None, logprobs=s.logprobs, output_kind=RequestOutputKind.DELTA,
                                extra_args={"steerlens": payload} if payload else None)
        self.stats["admitted"] += 1
        n_out = 0
        try:
            async for out in self._engine.generate({"prompt_token_ids": list(job.prompt_ids)}, params, rid):
                if job.cancelled.is_set():
                    self.stats["cancelled"] += 1
                    await self._engine.abort(rid)
                    return
                comp = out.outputs[0]
                ids = list(comp.token_ids)
                for k, tok in enumerate(ids):
                    lp, top = None, ()
                    if s.logprobs is not None and comp.logprobs and k < len(comp.logprobs):
                        d = comp.logprobs[k]
                        lp = float(d[tok].logprob) if tok in d else None
                        top = tuple(sorted(((i, float(x.logprob)) for i, x in d.items()), key=lambda t: -t[1]))[: s.logprobs]
                    job.emit(Token(tok, comp.text if k == len(ids) - 1 else "", lp, top, {}))
                n_out += len(ids)
                if comp.finish_reason is not None:
                    reason = "length" if comp.finish_reason == "length" else "stop"
                    job.emit(Finish(reason, len(job.prompt_ids), n_out))
                    return
        except Exception as e:  # reported to this request only
            job.emit(Failure(500, f"vLLM engine error: {type(e).__name__}: {e}", "server_error"))
        finally:
            with self._lock:
                self._inflight -= 1
