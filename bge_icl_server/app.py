"""``create_app``: the FastAPI app of ``bge-icl serve`` (and of each Ray Serve replica).

Routes:

- ``POST /v1/embeddings``: OpenAI's embeddings API with NVIDIA NIM's ``input_type`` and ``truncate``
  (:mod:`bge_icl_server.protocol`).
- ``GET /v1/models`` and ``GET /v1/models/{id}``: the served model ids in OpenAI's shape.
- ``GET /health``: 200 once the model is loaded and the prefixes built; 503 before, after a failed load, or while
  forward passes keep failing.
- ``GET /metrics``: Prometheus text (:mod:`bge_icl_server.metrics`).

With an API key set, every ``/v1/`` route needs ``Authorization: Bearer <key>`` (compared in constant time);
``/health`` and ``/metrics`` reveal no text and need none. Each request is logged as one line: its id, route, model
id, number of inputs, body size, status and time, never the texts.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bge_icl.errors import InputError
from bge_icl.truncation import TruncationError
from bge_icl_server.config import ServerConfig
from bge_icl_server.errors import SERVER, ApiError, from_core
from bge_icl_server.metrics import Metrics
from bge_icl_server.protocol import check_dimensions, cut, parse_body, parse_request, response_body
from bge_icl_server.service import EmbeddingService, QueueFull

log = logging.getLogger("bge_icl_server")
T = TypeVar("T")
RETRY_AFTER_S = "1"
CLIENT_CLOSED = 499  # nginx's code for "the client closed the connection before the answer"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")
_ROUTES = {"/v1/embeddings": "/v1/embeddings", "/v1/models": "/v1/models"}


def create_app(config: ServerConfig, service: EmbeddingService | None = None) -> FastAPI:
    """The embeddings server for ``config``.

    Args:
        config: What to serve.
        service: An :class:`~bge_icl_server.service.EmbeddingService` of ``config`` that the caller loads (a Ray
            Serve replica loads it in its constructor). None: the app makes one and loads it in a background
            thread when it starts, answering ``/health`` with 503 until it is ready.

    Returns:
        A FastAPI app, for uvicorn or ``serve.ingress``.

    Raises:
        ValueError: ``service`` serves another config.
    """
    if service is not None and service.config != config:
        msg = "service serves another config than the one given; pass its own (service.config)"
        raise ValueError(msg)
    owned = service is None
    svc = service or EmbeddingService(config)
    metrics = Metrics(svc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            svc.start_loading()
        yield

    app = FastAPI(title="bge-icl embeddings", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service, app.state.metrics, app.state.config = svc, metrics, config
    app.add_middleware(_Observe, metrics=metrics)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> Response:
        request.state.error = error
        return Response(error.content(), error.status, error.headers, media_type="application/json")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        routes = "POST /v1/embeddings, GET /v1/models, GET /health, GET /metrics"
        message = f"{request.method} {request.url.path}: {error.detail}; routes: {routes}"
        return await api_error(request, ApiError(error.status_code, message, headers=error.headers))

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> Response:
        rid = request.scope.get("request_id", "?")
        message = f"the server failed on this request ({type(error).__name__}); see its log for request {rid}"
        return await api_error(request, ApiError(500, message, type=SERVER))

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(_authorizer(config.api_key))])

    @v1.post("/embeddings")
    async def embeddings(request: Request) -> Response:
        raw = await _read_body(request, config.max_request_bytes)
        req = parse_request(parse_body(raw), config.max_inputs, config.model_ids)
        request.state.inputs = len(req.texts)
        _known(req.model, config)
        request.state.model = req.model  # a served id: safe to log
        if svc.state == "failed":
            raise ApiError(503, "the model failed to load; see the server's log", type=SERVER, code="not_ready")
        if svc.state != "ready":
            raise ApiError(503, "the model is loading; retry once GET /health answers 200", type=SERVER,
                           code="not_ready", headers={"Retry-After": RETRY_AFTER_S})  # fmt: skip
        check_dimensions(req.dimensions, svc.dimension)
        try:
            svc.admit(len(req.texts))
        except QueueFull as full:
            msg = (f"the server is busy: {full.queued} texts are queued and {full.rows} more would pass its limit "
                   f"of {full.limit}; retry after {RETRY_AFTER_S} s")  # fmt: skip
            raise ApiError(503, msg, type=SERVER, code="queue_full", headers={"Retry-After": RETRY_AFTER_S}) from None
        try:
            work = svc.embed(req.model, req.texts, req.kind, req.on_truncation)
            embedded = await _unless_disconnected(request, work)
        except (InputError, TruncationError) as e:
            raise from_core(e, req.kind) from None
        finally:
            svc.release(len(req.texts))
        if embedded is None:
            return Response(status_code=CLIENT_CLOSED)
        vectors = cut(embedded.vectors, req.dimensions, svc.normalizes)  # (N, d)
        return Response(response_body(req, vectors, sum(embedded.tokens)), media_type="application/json")

    @v1.get("/models")
    async def models() -> Response:
        return JSONResponse({"object": "list", "data": [_model_card(i, config) for i in config.model_ids]})

    @v1.get("/models/{model_id:path}")
    async def model(model_id: str) -> Response:
        _known(model_id, config)
        return JSONResponse(_model_card(model_id, config))

    app.include_router(v1)

    @app.get("/health")
    async def health() -> Response:
        status = "unhealthy" if svc.state == "ready" and not svc.healthy else svc.state
        headers = {"Retry-After": RETRY_AFTER_S} if svc.state in ("new", "loading") else None
        return JSONResponse({"status": status}, 200 if svc.healthy else 503, headers)

    @app.get("/metrics")
    async def prometheus() -> Response:
        text, content_type = metrics.render()
        return Response(text, media_type=content_type)

    return app


def _model_card(model_id: str, config: ServerConfig) -> dict[str, Any]:
    # "root": NVIDIA's clients take the id whose root is itself as the default model: the served name.
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "bge-icl", "root": config.served_name}


def _known(model_id: str, config: ServerConfig) -> None:
    if model_id not in config.model_ids:
        msg = f"the model {model_id[:200]!r} is not served here; served model ids: {', '.join(config.model_ids)}"
        raise ApiError(404, msg, param="model", code="model_not_found")


def _authorizer(api_key: str | None) -> Any:
    expected = None if api_key is None else api_key.encode()

    async def authorize(request: Request) -> None:
        if expected is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        headers = {"WWW-Authenticate": "Bearer"}
        if scheme.lower() != "bearer" or not given.strip():
            msg = "no API key: send the header 'Authorization: Bearer <key>' (the openai client's api_key)"
            raise ApiError(401, msg, code="invalid_api_key", headers=headers)
        if not hmac.compare_digest(given.strip().encode(), expected):
            raise ApiError(401, "incorrect API key", code="invalid_api_key", headers=headers)

    return authorize


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 once it passes ``limit`` bytes (by its Content-Length or as it streams in)."""
    declared = request.headers.get("content-length", "")
    too_large = f"this server takes at most {limit} bytes per request (split the request)"
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body has {declared} bytes; {too_large}", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body has more than {limit} bytes; {too_large}", code="request_too_large")
        chunks.append(chunk)
    request.state.bytes = size
    return b"".join(chunks)


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """``await work``, or cancel it and return None when the client goes away first (its rows are not run)."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this handler was cancelled (the server is stopping): so is the work
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()  # the client went away first
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: nobody else waits for it
    return None


class _Observe:
    """ASGI middleware: a request id, one log line and the request metrics per HTTP request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = scope["request_id"] = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._record(scope, rid, status, time.perf_counter() - start)

    def _record(self, scope: Scope, rid: str, status: int, seconds: float) -> None:
        path = _UNPRINTABLE.sub("?", scope["path"])[:200]  # the client's words: no control characters in the log
        state: MutableMapping[str, Any] = scope.get("state", {})
        if path.startswith("/v1/"):
            route = _ROUTES.get(path, "/v1/models/{id}" if path.startswith("/v1/models/") else "other")
            self.metrics.observe(route, status, seconds)
        error = state.get("error")
        level = logging.DEBUG if path in ("/health", "/metrics") else logging.INFO
        log.log(level, "request %s %s %s model=%s inputs=%s bytes=%s status=%d %.1f ms%s", rid, scope["method"],
                path, state.get("model", "-"), state.get("inputs", "-"), state.get("bytes", "-"), status,
                seconds * 1000, f" error={error.code or error.type}" if error is not None else "")  # fmt: skip
