"""``create_app``: the FastAPI app of ``bge-icl serve`` (and of each Ray Serve replica); the routes are thin.

Routes:

- ``POST /v1/embeddings``: OpenAI's embeddings API with NVIDIA NIM's ``input_type`` and ``truncate``
  (:mod:`bge_icl_server.protocol`), run in phases by :class:`~bge_icl_server.serving.ServingEmbedding`.
- ``GET /v1/models`` and ``GET /v1/models/{id}``: the served model ids (and each one's ``ID:query``) in OpenAI's shape.
- ``GET|HEAD /health/live``: 200 while the process serves HTTP (a liveness probe; also while the model loads).
- ``GET|HEAD /health/ready`` (and ``/health``): 200 once the model is loaded and the prefixes built; 503 before,
  after a failed load, or while forward passes keep failing (a readiness probe).
- ``GET /metrics``: Prometheus text (:mod:`bge_icl_server.metrics`).
- ``GET /docs`` and ``GET /openapi.json``: the OpenAPI page and schema.

With an API key set, every ``/v1/`` route needs ``Authorization: Bearer <key>`` (compared in constant time); the
health, metrics and OpenAPI routes reveal no text and need none. Each request is logged as one line: its id, route,
model id, number of inputs, body size, status and time, never the texts. Every response, errors and 500s included,
carries ``X-Request-ID``.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bge_icl_server.config import ServerConfig
from bge_icl_server.errors import SERVER, ApiError
from bge_icl_server.metrics import Metrics
from bge_icl_server.protocol import EmbeddingRequest, invalid
from bge_icl_server.service import EmbeddingService
from bge_icl_server.serving import LOADING_RETRY_AFTER_S, ServingEmbedding

log = logging.getLogger("bge_icl_server")
ROUTES = "POST /v1/embeddings, GET /v1/models, GET /health/live, GET /health/ready, GET /metrics, GET /docs"
REQUEST_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": EmbeddingRequest.model_json_schema()}}}}  # fmt: skip
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")
_ROUTES = {"/v1/embeddings": "/v1/embeddings", "/v1/models": "/v1/models"}


def create_app(config: ServerConfig, service: EmbeddingService | None = None) -> FastAPI:
    """The embeddings server for ``config``.

    Args:
        config: What to serve.
        service: An :class:`~bge_icl_server.service.EmbeddingService` of ``config`` that the caller loads (a Ray
            Serve replica loads it in its constructor). None: the app makes one and loads it in a background
            thread when it starts, answering ``/health/ready`` with 503 until it is ready.

    Returns:
        A FastAPI app, for uvicorn or ``serve.ingress``.

    Raises:
        ValueError: ``service`` serves another config.
    """
    if service is not None and service.config != config:
        msg = "service serves another config than the one given; pass its own (service.config)"
        raise ValueError(msg)
    svc = service or EmbeddingService(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("auth %s", "on: /v1/ needs 'Authorization: Bearer <key>'" if config.api_key else "off: no API key")
        if service is None:
            svc.start_loading()
        yield

    app = FastAPI(title="bge-icl embeddings", lifespan=lifespan)
    app.state.service, app.state.metrics, app.state.config = svc, Metrics(svc), config
    app.add_middleware(_Observe, metrics=app.state.metrics)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID"])  # fmt: skip
    for error, handler in ((ApiError, _api_error), (ValidationError, _invalid), (HTTPException, _http_error),
                           (Exception, _server_error)):  # fmt: skip
        app.add_exception_handler(error, handler)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(_authorizer(config.api_key))])
    v1.add_api_route("/embeddings", ServingEmbedding(svc).create, methods=["POST"], openapi_extra=REQUEST_BODY)
    v1.add_api_route("/models", _models)
    v1.add_api_route("/models/{model_id:path}", _model)
    app.include_router(v1)
    for path, route in (("/health/live", _live), ("/health/ready", _ready), ("/health", _ready)):
        app.add_api_route(path, route, methods=["GET"], include_in_schema=path != "/health")
        app.add_api_route(path, route, methods=["HEAD"], include_in_schema=False)
    app.add_api_route("/metrics", _metrics)
    return app


async def _live() -> Response:
    return JSONResponse({"status": "alive"})


async def _ready(request: Request) -> Response:
    svc: EmbeddingService = request.app.state.service
    status = "unhealthy" if svc.state == "ready" and not svc.healthy else svc.state
    headers = {"Retry-After": LOADING_RETRY_AFTER_S} if svc.state in ("new", "loading") else None
    return JSONResponse({"status": status}, 200 if svc.healthy else 503, headers)


async def _metrics(request: Request) -> Response:
    text, content_type = request.app.state.metrics.render()
    return Response(text, media_type=content_type)


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    request.state.error = error
    return Response(error.content(), error.status, error.headers, media_type="application/json")


async def _invalid(request: Request, error: Exception) -> Response:
    assert isinstance(error, ValidationError)
    return await _api_error(request, invalid(error, request.app.state.config.model_ids))


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    message = f"{request.method} {request.url.path}: {error.detail}; routes: {ROUTES}"
    return await _api_error(request, ApiError(error.status_code, message, headers=error.headers))


async def _server_error(request: Request, error: Exception) -> Response:
    """A 500 (an unexpected error): it passes outside the middleware, so it sets ``X-Request-ID`` itself."""
    rid = request.scope.get("request_id", "?")
    message = f"the server failed on this request ({type(error).__name__}); see its log for request {rid}"
    return await _api_error(request, ApiError(500, message, type=SERVER, headers={"X-Request-ID": rid}))


async def _models(request: Request) -> Response:
    config: ServerConfig = request.app.state.config
    return JSONResponse({"object": "list", "data": _cards(config.listed_ids, config)})


async def _model(request: Request, model_id: str) -> Response:
    return JSONResponse(_card(model_id, request.app.state.config))


def _cards(ids: tuple[str, ...], config: ServerConfig) -> list[dict[str, Any]]:
    # "root": NVIDIA's clients take the id whose root is itself as the default model: the served name.
    return [{"id": i, "object": "model", "created": 0, "owned_by": "bge-icl", "root": config.served_name} for i in ids]


def _card(model_id: str, config: ServerConfig) -> dict[str, Any]:
    if config.role(model_id) is None:
        msg = f"the model {model_id[:200]!r} is not served here; served model ids: {', '.join(config.listed_ids)}"
        raise ApiError(404, msg, param="model", code="model_not_found")
    return _cards((model_id,), config)[0]


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
        if not hmac.compare_digest(given.strip().encode("utf-8", "replace"), expected):
            raise ApiError(401, "incorrect API key", code="invalid_api_key", headers=headers)

    return authorize


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
            self.metrics.observe(route, status, seconds, state.get("model", "-"), state.get("inputs", 0))
        error = state.get("error")
        level = logging.DEBUG if path.startswith(("/health", "/metrics")) else logging.INFO
        log.log(level, "request %s %s %s model=%s inputs=%s bytes=%s status=%d %.1f ms%s", rid, scope["method"],
                path, state.get("model", "-"), state.get("inputs", "-"), state.get("bytes", "-"), status,
                seconds * 1000, f" error={error.code or error.type}" if error is not None else "")  # fmt: skip
