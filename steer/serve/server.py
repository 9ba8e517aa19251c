"""``serve`` (the ``steerlens serve`` command) and ``Server``, a uvicorn server in a background
thread for notebooks, tests and benchmarks."""

from __future__ import annotations

import os
import threading
from pathlib import Path
import time
from typing import TYPE_CHECKING, Any

from steer.serve.app import Limits, create_app
from steer.serve.engine import Engine
from steer.serve.metrics import Metrics
from steer.serve.registry import Registry

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

API_KEY_ENV = "STEERLENS_API_KEY"


def build(model: "TransformerBridge", *, model_id: str, vectors: str | os.PathLike | None = None,
          probes: str | os.PathLike | None = None, api_key: str | None = None, max_batch: int = 16,
          max_queue: int = 64, mode: str = "continuous", batch_window: float = 0.05,
          limits: Limits = Limits(), engine: str = "inprocess", checkpoint: str | None = None,
          vllm_options: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """The app and its (not yet started) engine, with vectors and probes loaded from directories.

    ``engine``: ``"inprocess"`` (steerlens' continuous-batching engine, the default) or
    ``"vllm"`` (``steer.serve.vllm_engine.VLLMEngine`` on the HF ``checkpoint`` the model was
    loaded from; needs ``pip install 'steerlens[vllm]'``, see docs/serve.md)."""
    if engine not in ("inprocess", "vllm"):
        raise ValueError(f"engine must be 'inprocess' or 'vllm', got {engine!r}")
    registry = Registry(model)
    if vectors is not None:
        registry.load_dir(vectors, "vectors")
    if probes is not None:
        registry.load_dir(probes, "probes")
    metrics = Metrics()
    if engine == "vllm":
        from steer.serve.vllm_engine import VLLMEngine

        if checkpoint is None:
            raise ValueError("engine='vllm' needs checkpoint: the HF model directory vLLM loads")
        eng: Any = VLLMEngine(model, checkpoint, max_batch=max_batch, max_queue=max_queue, **(vllm_options or {}))
    else:
        eng = Engine(model, max_batch=max_batch, max_queue=max_queue, mode=mode, batch_window=batch_window,
                     on_step=metrics.step)
    metrics.queue.set_function(lambda: eng.queue_length)
    metrics.running.set_function(lambda: eng.running)
    app = create_app(model, eng, registry, model_id=model_id, api_key=api_key, limits=limits, metrics=metrics)
    return app, eng


class Server:
    """``with Server(app, engine) as s: s.url`` — uvicorn on ``host:port`` (port 0: a free one)
    in a background thread; the engine is started on entry and both are stopped on exit."""

    def __init__(self, app: Any, engine: Engine, *, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.engine = engine
        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(self.config)
        self.thread: threading.Thread | None = None
        self.url = ""

    def __enter__(self) -> "Server":
        self.engine.start()
        self.thread = threading.Thread(target=self.server.run, name="steerlens-http", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.engine.stop()
                raise RuntimeError(f"the server did not start on {self.config.host}:{self.config.port}")
            time.sleep(0.01)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(30)
        self.engine.stop()


def serve(model: str = "gemma-3-270m", *, vectors: str | None = None, probes: str | None = None,
          host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, max_batch: int = 16,
          max_queue: int = 64, mode: str = "continuous", limits: Limits = Limits(), device: str | None = None,
          dtype: str | None = None, model_id: str | None = None, engine: str = "inprocess",
          tensor_parallel_size: int = 1, nnodes: int = 1, master_addr: str | None = None) -> None:
    """Load ``model`` and serve it until interrupted (``steerlens serve``). ``model_id``: the
    name clients pass as ``model`` (default: the spec, or a local path's last component).
    ``nnodes``/``master_addr`` (vLLM only): this process is node 0 of ``nnodes``, the workers of the
    other nodes run ``python -m steer.serve.vllm_node`` (see ``docs/serve.md``)."""
    import uvicorn

    from steerlens.models import load_model

    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    m = load_model(model, device=device, dtype=dtype)
    model_id = model_id or (Path(model).name if os.path.exists(model) else model)
    checkpoint = None
    if engine == "vllm":
        from steerlens.models import resolve_checkpoint

        checkpoint = resolve_checkpoint(model)
    app, eng = build(m, model_id=model_id, vectors=vectors, probes=probes, api_key=api_key, max_batch=max_batch,
                     max_queue=max_queue, mode=mode, limits=limits, engine=engine, checkpoint=checkpoint,
                     vllm_options={"tensor_parallel_size": tensor_parallel_size, "dtype": dtype or "float32",
                                   **({"nnodes": nnodes, "node_rank": 0, "master_addr": master_addr or "127.0.0.1"}
                                      if nnodes > 1 else {})})
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print(f"warning: serving on {host} without an API key: anyone who can reach it can register vectors")
    eng.start()
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", lifespan="off")
    finally:
        eng.stop()
