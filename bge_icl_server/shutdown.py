"""How ``bge-icl serve`` stops: a bounded drain, then 503s; a second signal exits at once.

On SIGTERM or SIGINT the server stops accepting connections and lets the requests in flight finish for up to
``drain_timeout`` seconds (uvicorn's graceful shutdown). Requests still running then are cancelled (their rows
leave the core's queue) and answered ``503`` with ``Retry-After`` in OpenAI's error shape, never a ``500``, and the
log gets one line, no traceback. A second signal during the drain ends the process at once (exit status
``128 + signal``), without waiting for anything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from types import FrameType
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bge_icl_server.errors import SERVER, ApiError

log = logging.getLogger("bge_icl_server")
DEFAULT_DRAIN_TIMEOUT_S = 20.0
"""Seconds the requests in flight get to finish after a signal; under Kubernetes' default 30 s grace period."""
RETRY_AFTER_S = "1"
SHUTTING_DOWN = "shutting_down"
"""The error ``code`` of a request cut off by the end of the drain."""


class DrainingServer(uvicorn.Server):
    """uvicorn's server, stopped as this module describes (a bounded drain, a second signal exits at once).

    Args:
        app: The ASGI app (wrapped here so that requests cut off by the drain's end get a 503).
        drain_timeout: Seconds the requests in flight may take after the first signal (> 0).
        **config: Any other ``uvicorn.Config`` argument.
    """

    def __init__(self, app: ASGIApp, drain_timeout: float = DEFAULT_DRAIN_TIMEOUT_S, **config: Any) -> None:
        config = {"log_config": None, "access_log": False, "lifespan": "on", **config}
        # uvicorn declares an int, and takes any number of seconds (asyncio.timeout)
        super().__init__(uvicorn.Config(AnswerCutOff(app), timeout_graceful_shutdown=drain_timeout, **config))  # type: ignore[arg-type]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The first signal starts the drain; a second one ends the process now (nothing is re-raised later)."""
        if self.should_exit:
            name = signal.Signals(sig).name
            os.write(2, f"bge-icl: {name} again: exiting now, without waiting for the requests in flight\n".encode())
            os._exit(128 + sig)
        self.should_exit = True


class AnswerCutOff:
    """ASGI middleware: a request whose task is cancelled before its response started (the drain's end) is
    answered ``503`` with ``Retry-After`` instead of uvicorn's ``500`` and traceback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except asyncio.CancelledError:
            if started:  # the answer is on its way: nothing better to send
                return
            log.warning("request %s %s cut off by the end of the drain: answered 503", scope.get("request_id", "?"),
                        scope["path"][:200])  # fmt: skip
            await send_error(send, shutting_down())


def shutting_down() -> ApiError:
    """The 503 of a request that the server, shutting down, does not (or no longer) serve."""
    msg = f"the server is shutting down and did not serve this request; retry after {RETRY_AFTER_S} s"
    return ApiError(503, msg, type=SERVER, code=SHUTTING_DOWN, headers={"Retry-After": RETRY_AFTER_S})


async def send_error(send: Send, error: ApiError) -> None:
    """Answer with ``error`` at the ASGI level (outside the app, which may be gone)."""
    body = error.content()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *((k.lower().encode(), v.encode()) for k, v in error.headers.items())]  # fmt: skip
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
