"""``create_app``: the OpenAI-compatible FastAPI app in front of one ``Engine``.

Routes: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (server-sent
events with ``"stream": true``), ``GET/POST/DELETE /v1/steering/vectors`` and ``/v1/probes``,
``GET /health``, ``GET /metrics`` (Prometheus). Every error is a 4xx (5xx only for an engine
fault) with OpenAI's body ``{"error": {"message", "type", "param", "code"}}``; with ``api_key``
set every route needs ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from steer.serve.engine import Engine, Failure, Finish, Job, QueueFull, Sampling, SteerEntry, Token
from steer.serve.metrics import Metrics
from steer.serve.registry import Registry, RegistryError, check_name, probe_info, vector_info

from fastapi import FastAPI, Request

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


@dataclass(frozen=True)
class Limits:
    """Per-server limits (all configurable from ``steerlens serve``)."""

    max_tokens: int = 512  # largest max_tokens a request may ask for
    default_max_tokens: int = 16  # OpenAI's default for completions
    timeout: float = 300.0  # seconds a request may run (queue + generation)
    max_body: int = 4 << 20  # bytes of a request body
    max_stop: int = 4


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str | None = None, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 408: "timeout_error", 409: "invalid_request_error",
          413: "invalid_request_error", 429: "rate_limit_error", 503: "server_error"}


def error_body(status: int, message: str, type: str | None = None, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type or _TYPES.get(status, "server_error"),
                      "param": param, "code": code}}


class _Middleware:
    """A pure ASGI middleware that calls ``fn(scope, receive, send, inner)``."""

    def __init__(self, app: Any, fn: Any) -> None:
        self.app, self.fn = app, fn

    async def __call__(self, scope, receive, send) -> None:
        await self.fn(scope, receive, send, self.app)


def create_app(model: "TransformerBridge", engine: "Engine | Any", registry: Registry, *, model_id: str,
               api_key: str | None = None, limits: Limits = Limits(), metrics: Metrics | None = None) -> "FastAPI":
    """The app; the caller owns ``engine`` (start it before serving, stop it after)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException

    metrics = metrics or Metrics(engine)
    app = FastAPI(title="steerlens", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.registry, app.state.metrics = engine, registry, metrics
    n_ctx = int(model.cfg.n_ctx)

    def fail(e: APIError) -> JSONResponse:
        return JSONResponse(error_body(e.status, e.message, e.type, e.param, e.code), e.status, headers=e.headers)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return fail(e)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException):
        msg = {404: f"no route {request.method} {request.url.path}", 405: f"{request.method} is not allowed on "
               f"{request.url.path}"}.get(e.status_code, str(e.detail))
        return fail(APIError(e.status_code, msg))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        return fail(_validation_error(e.errors()))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):
        return fail(APIError(500, f"internal error: {type(e).__name__}: {e}", "server_error"))

    async def guard(scope, receive, send, inner) -> None:
        """API key, body size and request metrics for every route. A pure ASGI middleware, not
        ``@app.middleware("http")``: that one hides a client's disconnect from the routes, so a
        non-streamed request would run on after its client went away."""
        if scope["type"] != "http":
            return await inner(scope, receive, send)
        start, route, status = time.monotonic(), scope["path"], 500
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        reject = None
        if api_key is not None:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
                reject = APIError(401, "a valid API key is required: send 'Authorization: Bearer <key>'",
                                  "authentication_error", None, "invalid_api_key")
        size = headers.get("content-length")
        if reject is None and size is not None and (not size.isdigit() or int(size) > limits.max_body):
            reject = APIError(413, f"the request body is larger than {limits.max_body} bytes", code="body_too_large")
        if reject is not None:
            metrics.request(route, reject.status, 0.0)
            return await fail(reject)(scope, receive, send)

        async def sending(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await inner(scope, receive, sending)
        finally:  # latency to the end of the body (streams included)
            metrics.request(route, status, time.monotonic() - start)

    app.add_middleware(_Middleware, fn=guard)

    async def body(request: Request, schema: Any) -> Any:
        from pydantic import ValidationError

        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limits.max_body:
                raise APIError(413, f"the request body is larger than {limits.max_body} bytes", code="body_too_large")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
        try:
            return schema.model_validate(data)
        except ValidationError as e:
            raise _validation_error(e.errors()) from None

    # -- info -------------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, "running": engine.running, "waiting": engine.queue_length}

    @app.get("/metrics")
    async def prometheus():
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "steerlens",
                                            "n_ctx": n_ctx, "d_model": int(model.cfg.d_model),
                                            "n_layers": int(model.cfg.n_layers)}]}

    # -- vectors and probes ---------------------------------------------------------------------------
    from steer.serve.schemas import ChatRequest, CompletionRequest, ProbeUpload, VectorUpload

    @app.get("/v1/steering/vectors")
    async def list_vectors():
        return {"object": "list", "data": [vector_info(k, v) for k, v in sorted(registry.vectors.items())]}

    @app.post("/v1/steering/vectors", status_code=201)
    async def add_vector(request: Request):
        up = await body(request, VectorUpload)
        with _registry_errors():
            name = check_name(up.name, "vector")
            if (up.file is None) == (up.layers is None):
                raise APIError(400, "give exactly one of file (a base64 vector file) and layers (inline)", param="file")
            if up.file is not None:
                v = await asyncio.to_thread(registry.vector_from_file, up.file)
                if up.coeff is not None:
                    v = v.with_coeff(float(up.coeff))
            else:
                v = registry.inline_vector(up.layers, "layers", hook=up.hook,
                                           coeff=None if up.coeff is None else float(up.coeff))
            registry.add_vector(name, v, replace=up.replace)
        return JSONResponse(vector_info(name, v), 201)

    @app.delete("/v1/steering/vectors/{name}")
    async def delete_vector(name: str):
        with _registry_errors():
            registry.delete("vector", name)
        return {"id": name, "object": "steering.vector", "deleted": True}

    @app.get("/v1/probes")
    async def list_probes():
        return {"object": "list", "data": [probe_info(k, *p) for k, p in sorted(registry.probes.items())]}

    @app.post("/v1/probes", status_code=201)
    async def add_probe(request: Request):
        up = await body(request, ProbeUpload)
        with _registry_errors():
            name = check_name(up.name, "probe")
            spec = await asyncio.to_thread(registry.probe_from_file, up.file)
            registry.add_probe(name, spec, replace=up.replace)
        return JSONResponse(probe_info(name, *spec), 201)

    @app.delete("/v1/probes/{name}")
    async def delete_probe(name: str):
        with _registry_errors():
            registry.delete("probe", name)
        return {"id": name, "object": "probe", "deleted": True}

    # -- generation ---------------------------------------------------------------------------------
    def job_kwargs(req: Any, prompt_ids: list[int], max_tokens: int | None, logprobs: int | None) -> dict[str, Any]:
        if req.model != model_id:
            raise APIError(404, f"the model {req.model!r} is not served here (this server serves {model_id!r})",
                           "not_found_error", "model", "model_not_found")
        if req.n != 1:
            raise APIError(400, f"n must be 1, got {req.n}", param="n")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(req, name):
                raise APIError(400, f"{name} is not supported (only 0)", param=name)
        if req.logit_bias:
            raise APIError(400, "logit_bias is not supported", param="logit_bias")
        max_tokens = limits.default_max_tokens if max_tokens is None else max_tokens
        if max_tokens > limits.max_tokens:
            raise APIError(400, f"max_tokens={max_tokens} is above this server's limit of {limits.max_tokens}",
                           param="max_tokens", code="max_tokens_too_large")
        if not prompt_ids:
            raise APIError(400, "the prompt is empty", param="prompt")
        if len(prompt_ids) + max_tokens > n_ctx:
            raise APIError(400, f"the prompt is {len(prompt_ids)} tokens and max_tokens={max_tokens}: "
                           f"{len(prompt_ids) + max_tokens} tokens do not fit the model's context of {n_ctx}",
                           param="max_tokens", code="context_length_exceeded")
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        if len(stop) > limits.max_stop or any(not s for s in stop):
            raise APIError(400, f"stop takes up to {limits.max_stop} non-empty strings", param="stop")
        timeout = limits.timeout if req.timeout is None else min(float(req.timeout), limits.timeout)
        return dict(prompt_ids=prompt_ids, steering=steering_entries(req.steering), monitors=monitors(req.monitors),
                    sampling=Sampling(max_tokens=max_tokens, temperature=float(req.temperature), top_p=float(req.top_p),
                                      seed=req.seed, stop=stop, logprobs=logprobs),
                    timeout=timeout)

    def steering_entries(specs: list) -> tuple[SteerEntry, ...]:
        from steer.inputs import plan

        out = []
        for k, s in enumerate(specs):
            param = f"steering[{k}]"
            with _registry_errors():
                if isinstance(s.vector, str):
                    v = registry.vector(s.vector, f"{param}.vector")
                else:
                    v = registry.inline_vector(s.vector.layers, f"{param}.vector.layers", hook=s.vector.hook)
            try:
                p = plan(model, v, coeff=None if s.coeff is None else float(s.coeff), layers=s.layers, op=s.op,
                         positions=s.positions)
            except (ValueError, TypeError) as e:
                raise APIError(400, f"{param}: {e}", param=param, code="invalid_steering") from None
            coeff = None if p.coeff is None or s.op == "ablate" else float(p.coeff)
            out.append(SteerEntry(v, coeff, tuple(p.layers), s.op, s.positions))
        return tuple(out)

    def monitors(names: list[str]) -> dict[str, tuple[str, Any]]:
        if names and not getattr(engine, "supports_monitors", True):
            raise APIError(400, f"probe monitors are not available on this server's engine "
                           f"({type(engine).__name__}): serve with the in-process engine to use them",
                           param="monitors", code="monitors_unsupported")
        out = {}
        for i, name in enumerate(names):
            with _registry_errors():
                out[name] = registry.probe(name, f"monitors[{i}]")
        return out

    def completion_prompt(req: CompletionRequest) -> list[int]:
        from steerlens.tokens import encode

        p = req.prompt
        if isinstance(p, list) and p and all(isinstance(x, str) for x in p):
            if len(p) != 1:
                raise APIError(400, "prompt: one prompt per request (a list of one string or token ids)", param="prompt")
            p = p[0]
        if isinstance(p, str):
            if not p:
                raise APIError(400, "the prompt is empty", param="prompt")
            return encode(model, p)
        vocab = int(model.cfg.d_vocab)
        bad = [t for t in p if not 0 <= t < vocab]
        if bad:
            raise APIError(400, f"prompt token ids {bad[:5]} are outside the vocabulary (0..{vocab - 1})", param="prompt")
        return list(p)

    def chat_prompt(req: ChatRequest) -> list[int]:
        tok = model.tokenizer
        if not getattr(tok, "chat_template", None):
            raise APIError(400, f"the model {model_id!r} has no chat template (it is a base model): "
                           "use POST /v1/completions with a plain prompt", param="messages", code="no_chat_template")
        messages = []
        for i, m in enumerate(req.messages):
            content = m.content
            if isinstance(content, list):
                if not all(isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                           for part in content):
                    raise APIError(400, f"messages[{i}].content: only text parts are supported", param=f"messages[{i}]")
                content = "".join(part["text"] for part in content)
            messages.append({"role": m.role, "content": content})
        try:
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        except Exception as e:  # a template that refuses these messages (e.g. roles out of order)
            raise APIError(400, f"the chat template refused these messages: {e}", param="messages") from None
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)

    async def submit(request: Request, kwargs: dict[str, Any]) -> tuple[Job, asyncio.Queue]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job = Job(emit=lambda e: loop.call_soon_threadsafe(events.put_nowait, e), **kwargs)
        try:
            engine.submit(job)
        except QueueFull as e:
            raise APIError(429, f"the server is busy ({e}): retry later", "rate_limit_error", None, "queue_full",
                           {"Retry-After": "1"}) from None
        except RuntimeError as e:
            raise APIError(503, str(e), "server_error") from None
        except (ValueError, TypeError) as e:  # a spec this engine cannot run (e.g. vLLM: resid_post only)
            raise APIError(400, str(e), param="steering", code="invalid_steering") from None
        metrics.submitted(len(kwargs["prompt_ids"]))
        return job, events

    async def next_event(request: Request, job: Job, events: asyncio.Queue) -> Any:
        """The job's next event; a ``Failure(408)`` once its timeout has passed (also while it
        waits behind a busy engine); ``CancelledError`` when the client went away."""
        while True:
            left = None if job.timeout is None else job.submitted + job.timeout - time.monotonic()
            if left is not None and left <= 0:
                job.cancel()
                return Failure(408, f"the request took longer than its timeout of {job.timeout} s",
                               "timeout_error", "timeout")
            try:
                return await asyncio.wait_for(events.get(), 0.25 if left is None else min(0.25, left))
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel()
                    raise asyncio.CancelledError from None

    def failure(e: Failure) -> APIError:
        return APIError(e.status, e.message, e.type, None, e.code)

    async def generate(request: Request, req: Any, kwargs: dict[str, Any], chat: bool):
        job, events = await submit(request, kwargs)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        start = time.monotonic()
        try:
            first = await next_event(request, job, events)
        except asyncio.CancelledError:
            job.cancel()
            raise
        if isinstance(first, Failure):
            raise failure(first)
        metrics.first_token(time.monotonic() - start)
        if req.stream:
            usage = bool((req.stream_options or {}).get("include_usage"))
            return StreamingResponse(_stream(request, job, events, first, rid, created, chat, usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        tokens, end = [first], first
        try:
            while not isinstance(end, (Finish, Failure)):
                end = await next_event(request, job, events)
                tokens.append(end)
        except asyncio.CancelledError:
            job.cancel()
            raise
        if isinstance(end, Failure):
            raise failure(end)
        toks = [t for t in tokens if isinstance(t, Token)]
        metrics.finished(end.completion_tokens)
        choice = _choice(model, toks, end, chat, kwargs["monitors"], kwargs["sampling"].logprobs, delta=False)
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": model_id, "choices": [choice], "usage": _usage(end)}

    async def _stream(request: Request, job: Job, events: asyncio.Queue, first: Any, rid: str, created: int,
                      chat: bool, include_usage: bool) -> AsyncIterator[bytes]:
        obj = "chat.completion.chunk" if chat else "text_completion"
        e = first
        try:
            if chat:  # the role comes first, as OpenAI sends it
                head = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}
                yield _sse({"id": rid, "object": obj, "created": created, "model": model_id, "choices": [head]})
            while True:
                if isinstance(e, Failure):
                    yield _sse(error_body(e.status, e.message, e.type, None, e.code))
                    break
                if isinstance(e, Token):
                    choice = _choice(model, [e], None, chat, job.monitors, job.sampling.logprobs, delta=True)
                    yield _sse({"id": rid, "object": obj, "created": created, "model": model_id, "choices": [choice]})
                elif isinstance(e, Finish):
                    metrics.finished(e.completion_tokens)
                    last = _choice(model, [], e, chat, job.monitors, job.sampling.logprobs, delta=True)
                    yield _sse({"id": rid, "object": obj, "created": created, "model": model_id, "choices": [last]})
                    if include_usage:
                        yield _sse({"id": rid, "object": obj, "created": created, "model": model_id, "choices": [],
                                    "usage": _usage(e)})
                    break
                e = await next_event(request, job, events)
            yield b"data: [DONE]\n\n"
        finally:
            job.cancel()  # a finished job ignores it; a client that left frees its row

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await body(request, CompletionRequest)
        if req.echo:
            raise APIError(400, "echo is not supported", param="echo")
        if req.best_of not in (None, 1):
            raise APIError(400, "best_of must be 1", param="best_of")
        if req.suffix:
            raise APIError(400, "suffix is not supported", param="suffix")
        kwargs = job_kwargs(req, completion_prompt(req), req.max_tokens, req.logprobs)
        return await generate(request, req, kwargs, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await body(request, ChatRequest)
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        ids = chat_prompt(req)
        kwargs = job_kwargs(req, ids, req.max_completion_tokens or req.max_tokens, logprobs)
        return await generate(request, req, kwargs, chat=True)

    return app


class _registry_errors:
    """Turn a ``RegistryError`` into the matching ``APIError``."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if isinstance(exc, RegistryError):
            raise APIError(exc.status, str(exc), param=exc.param, code=exc.code) from None
        if isinstance(exc, (ValueError, TypeError)) and not isinstance(exc, APIError):
            raise APIError(400, str(exc)) from None
        return False


def _validation_error(errors: list[dict[str, Any]]) -> APIError:
    def where(loc) -> str:
        out = ""
        for part in loc:
            if part == "body" or (isinstance(part, str) and _TYPE_TAG.match(part)):
                continue  # pydantic's labels of union members ("int", "list[str]", "InlineVector")
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        return out

    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    msgs = "; ".join(f"{where(e.get('loc', ())) or 'body'}: {e.get('msg')}" for e in errors[:5])
    return APIError(400, f"invalid request: {msgs}", param=where(first.get("loc", ())) or None, code="invalid_value")


_TYPE_TAG = re.compile(r"^(int|float|str|bool|list\[.*\]|dict\[.*\]|[A-Z]\w*|function-.*|literal\[.*\])$")


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _usage(end: Finish) -> dict[str, int]:
    return {"prompt_tokens": end.prompt_tokens, "completion_tokens": end.completion_tokens,
            "total_tokens": end.prompt_tokens + end.completion_tokens}


def _choice(model: Any, tokens: list[Token], end: Finish | None, chat: bool, monitors: dict, logprobs: int | None,
            *, delta: bool) -> dict[str, Any]:
    text = "".join(t.text for t in tokens)
    choice: dict[str, Any] = {"index": 0, "finish_reason": end.reason if end is not None else None}
    if chat:
        choice["delta" if delta else "message"] = ({"content": text} if delta else {"role": "assistant", "content": text})
    else:
        choice["text"] = text
    choice["logprobs"] = _logprobs(model, tokens, chat, logprobs) if logprobs is not None and tokens else None
    if monitors:
        choice["monitors"] = {name: [t.scores.get(name) for t in tokens] for name in monitors}
    return choice


def _logprobs(model: Any, tokens: list[Token], chat: bool, k: int) -> dict[str, Any]:
    tok = model.tokenizer
    piece = lambda i: tok.decode([i])  # noqa: E731
    if chat:
        return {"content": [{"token": piece(t.id), "logprob": t.logprob, "bytes": list(piece(t.id).encode()),
                             "top_logprobs": [{"token": piece(i), "logprob": lp, "bytes": list(piece(i).encode())}
                                              for i, lp in t.top_logprobs]} for t in tokens]}
    return {"tokens": [piece(t.id) for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [{piece(i): lp for i, lp in t.top_logprobs} for t in tokens] if k else None,
            "text_offset": None}
