"""``ServingEmbedding``: one ``/v1/embeddings`` request in phases (vLLM's ``OpenAIServingEmbedding``).

1. **read**: the body, refused past ``max_request_bytes``; parsed into an
   :class:`~bge_icl_server.protocol.EmbeddingRequest` (a large body on a worker thread);
2. **validate**: the model id, readiness, ``max_inputs``, ``dimensions``, admission (the core's queue);
3. **schedule**: the texts through :meth:`EmbeddingService.embed` (the core tokenizes and runs them), cancelled when
   the client goes away;
4. **respond**: OpenAI's body (a large one built on a worker thread).

Nothing here blocks the event loop with work that grows with the request: ``/health`` answers while a large request
is parsed, embedded or answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from fastapi import Request
from fastapi.responses import Response

from bge_icl.errors import InputError
from bge_icl.kinds import Kind
from bge_icl.truncation import TruncationError
from bge_icl_server.errors import SERVER, ApiError, from_core
from bge_icl_server.protocol import EmbeddingRequest, parse, response_body
from bge_icl_server.service import EmbeddingService, QueueFull

T = TypeVar("T")
CLIENT_CLOSED = 499  # nginx's code for "the client closed the connection before the answer"
LOADING_RETRY_AFTER_S = "1"
INLINE_BYTES = 64 * 2**10  # a body up to this size is parsed on the event loop (well under a millisecond)
INLINE_FLOATS = 2**16  # a response of up to this many numbers is built on the event loop


@dataclass(frozen=True)
class Plan:
    """A validated request, ready to schedule.

    Attributes:
        request: The parsed request.
        model_id: The model id whose embedder runs (``ID`` of ``ID:query``).
        kind: ``"queries"`` or ``"passages"``.
        dimensions: The per-call cut (None: the model's vectors as they are).
    """

    request: EmbeddingRequest
    model_id: str
    kind: Kind
    dimensions: int | None


class ServingEmbedding:
    """Serves ``/v1/embeddings`` for one :class:`EmbeddingService`.

    Args:
        service: The loaded (or loading) model.
    """

    def __init__(self, service: EmbeddingService) -> None:
        self.service, self.config = service, service.config

    async def create(self, http: Request) -> Response:
        """The response to one ``POST /v1/embeddings`` (errors raise :class:`ApiError` or pydantic's)."""
        plan = self.validate(await self.read(http))
        http.state.model = plan.request.model  # a served id: safe to log
        embedded = await _unless_disconnected(http, self.schedule(plan))
        if embedded is None:
            return Response(status_code=CLIENT_CLOSED)
        vectors, tokens = embedded
        return Response(await self.respond(plan, vectors, tokens), media_type="application/json")

    async def read(self, http: Request) -> EmbeddingRequest:
        """Phase 1: the body (413 past ``max_request_bytes``), parsed; a large one on a worker thread."""
        raw = await _read_body(http, self.config.max_request_bytes)
        request = parse(raw) if len(raw) <= INLINE_BYTES else await asyncio.to_thread(parse, raw)
        http.state.inputs = len(request.input)
        return request

    def validate(self, request: EmbeddingRequest) -> Plan:
        """Phase 2: a served model id, a ready model, ``max_inputs``, ``dimensions``, room in the queue."""
        role = self.config.role(request.model)
        if role is None:
            ids = ", ".join(self.config.listed_ids)
            msg = f"the model {request.model[:200]!r} is not served here; served model ids: {ids}"
            raise ApiError(404, msg, param="model", code="model_not_found")
        model_id, fixed = role
        self._check_ready()
        if len(request.input) > self.config.max_inputs:
            msg = (f"input has {len(request.input)} items; this server takes at most {self.config.max_inputs} per "
                   "request (split the request)")  # fmt: skip
            raise ApiError(413, msg, param="input", code="too_many_inputs")
        kind = _kind(request, fixed)
        dimensions = self._dimensions(request.dimensions)
        self._admit(len(request.input))
        return Plan(request, model_id, kind, dimensions)

    async def schedule(self, plan: Plan) -> tuple[np.ndarray, int]:
        """Phase 3: the vectors (N, d) and the tokens embedded; the core's input errors as 400s."""
        request = plan.request
        try:
            embedded = await self.service.embed(plan.model_id, request.input, plan.kind, request.on_truncation,
                                                plan.dimensions)  # fmt: skip
        except (InputError, TruncationError) as e:
            raise from_core(e, plan.kind) from None
        return embedded.vectors, sum(embedded.tokens)

    async def respond(self, plan: Plan, vectors: np.ndarray, tokens: int) -> bytes:
        """Phase 4: OpenAI's body; a large one on a worker thread."""
        args = (plan.request.model, plan.request.encoding_format, vectors, tokens)
        if vectors.size <= INLINE_FLOATS:
            return response_body(*args)
        return await asyncio.to_thread(response_body, *args)

    def _check_ready(self) -> None:
        if self.service.state == "failed":
            raise ApiError(503, "the model failed to load; see the server's log", type=SERVER, code="not_ready")
        if self.service.state != "ready":
            raise ApiError(503, "the model is loading; retry once GET /health answers 200", type=SERVER,
                           code="not_ready", headers={"Retry-After": LOADING_RETRY_AFTER_S})  # fmt: skip

    def _dimensions(self, dimensions: int | None) -> int | None:
        full = self.service.dimension
        if dimensions is None or dimensions == full:
            return None
        if not 0 < dimensions <= full:
            msg = f"dimensions={dimensions} is out of range; this model's vectors have 1 to {full} dimensions"
            raise ApiError(400, msg, param="dimensions")
        if not self.config.allow_dimensions:
            msg = (f"dimensions={dimensions} is refused: this model is not trained for shortened vectors (their "
                   f"first dimensions are no smaller embedding), so send {full} or leave dimensions out; the "
                   "operator can allow it with --allow-dimensions")  # fmt: skip
            raise ApiError(400, msg, param="dimensions")
        return dimensions

    def _admit(self, rows: int) -> None:
        try:
            self.service.admit(rows)
        except QueueFull as full:
            wait = str(full.retry_after)
            msg = (f"the server is busy: {full.queued} texts are queued and {full.rows} more would pass its limit "
                   f"of {full.limit}; retry after {wait} s")  # fmt: skip
            raise ApiError(503, msg, type=SERVER, code="queue_full", headers={"Retry-After": wait}) from None


def _kind(request: EmbeddingRequest, fixed: Kind | None) -> Kind:
    """The kind: the model id's role (``ID:query``), else ``input_type``, else passages; a conflict is a 400."""
    asked = request.kind
    if fixed is not None and asked not in (None, fixed):
        msg = (f"input_type={request.input_type!r} contradicts the model id {request.model!r}, which embeds "
               "queries; leave input_type out, or use the model id without ':query'")  # fmt: skip
        raise ApiError(400, msg, param="input_type")
    return fixed or asked or "passages"


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
