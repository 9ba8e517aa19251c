"""Serving: an OpenAI-compatible server with per-request steering vectors and probe monitors
over a continuous-batching engine (``steerlens serve``)."""

from steer.serve.app import Limits, create_app
from steer.serve.engine import Engine, Job, Sampling, SteerEntry
from steer.serve.registry import Registry
from steer.serve.server import Server, build, serve

__all__ = ["Engine", "Job", "Limits", "Registry", "Sampling", "Server", "SteerEntry", "build", "create_app", "serve"]
