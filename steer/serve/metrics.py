"""Prometheus metrics of one server (its own registry, so several servers can run in one process)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from steer.serve.engine import Engine

_ROUTES = ("/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions",
           "/v1/steering/vectors", "/v1/probes")
_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)


class Metrics:
    """Requests, tokens, queue length, running rows, batch sizes and latency histograms."""

    def __init__(self, engine: "Engine | None" = None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("steerlens_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.latency = Histogram("steerlens_request_latency_seconds", "HTTP request latency (to the last byte for "
                                 "non-streamed responses, to the first byte for streams)", ["route"],
                                 buckets=_LATENCY, registry=r)
        self.ttft = Histogram("steerlens_time_to_first_token_seconds", "queue + prefill time of a generation",
                              buckets=_LATENCY, registry=r)
        self.prompt_tokens = Counter("steerlens_prompt_tokens", "prompt tokens of accepted generations", registry=r)
        self.completion_tokens = Counter("steerlens_completion_tokens", "tokens generated", registry=r)
        self.batch = Histogram("steerlens_batch_size", "rows per forward call", ["kind"],
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.queue = Gauge("steerlens_queue_length", "requests waiting for a row", registry=r)
        self.running = Gauge("steerlens_running_rows", "requests decoding", registry=r)
        if engine is not None:
            self.queue.set_function(lambda: engine.queue_length)
            self.running.set_function(lambda: engine.running)

    def request(self, path: str, status: int, seconds: float) -> None:
        route = _route(path)
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def submitted(self, prompt_tokens: int) -> None:
        self.prompt_tokens.inc(prompt_tokens)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def finished(self, completion_tokens: int) -> None:
        self.completion_tokens.inc(completion_tokens)

    def step(self, kind: str, rows: int) -> None:
        self.batch.labels(kind).observe(rows)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _route(path: str) -> str:
    """The route template of ``path`` (bounded label values: unknown paths are ``"other"``)."""
    if path in _ROUTES:
        return path
    for base in ("/v1/steering/vectors/", "/v1/probes/"):
        if path.startswith(base) and "/" not in path[len(base):]:
            return base + "{name}"
    return "other"
