"""``serve_in_thread``: the server of ``bge-icl serve``, run on a thread of this process (notebooks, tests, docs).

A production server runs as its own process (``bge-icl serve``); this helper runs the same app with the same
uvicorn on a daemon thread, bound to a free port of 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from bge_icl_server.app import create_app
from bge_icl_server.config import ServerConfig
from bge_icl_server.service import EmbeddingService


@dataclass(frozen=True)
class RunningServer:
    """A server started by :func:`serve_in_thread`.

    Attributes:
        url: ``http://host:port``, the root (``/health``, ``/metrics``).
        api_url: ``http://host:port/v1``, the ``base_url`` of the ``openai`` and NVIDIA clients.
        app: The FastAPI app (``app.state.service`` is its :class:`~bge_icl_server.service.EmbeddingService`).
        server: The uvicorn server.
    """

    url: str
    api_url: str
    app: FastAPI
    server: uvicorn.Server

    @property
    def service(self) -> EmbeddingService:
        """The app's service (its state, queue, embedders)."""
        service: EmbeddingService = self.app.state.service
        return service


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one), as uvicorn binds it; connections made before
    the server accepts wait in its backlog.

    Raises:
        OSError: The address is in use or not this machine's.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family=family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextmanager
def serve_in_thread(
    config: ServerConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    service: EmbeddingService | None = None,
    wait_ready: bool = True,
    timeout: float = 120.0,
) -> Iterator[RunningServer]:
    """Run the app of ``config`` on a daemon thread; stop it (in-flight requests first) on exit.

    Args:
        config: What to serve.
        host: The address to bind (default: loopback only).
        port: The port (0: a free one; see ``RunningServer.url``).
        service: A service the caller loads (see :func:`~bge_icl_server.app.create_app`); None: loaded on start.
        wait_ready: Return once ``/health`` would answer 200 (the model loaded, the prefixes built).
        timeout: Seconds to wait for the server (and, with ``wait_ready``, the model).

    Raises:
        RuntimeError: The model failed to load (its error is the cause), or the server did not start in time.

    Example:
        >>> with serve_in_thread(ServerConfig(model="BAAI/bge-en-icl")) as running:  # doctest: +SKIP
        ...     client = openai.OpenAI(base_url=running.api_url, api_key="unused")
    """
    app = create_app(config, service)
    sock = listen(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="bge-icl-server", daemon=True)
    thread.start()
    url = url_of(sock)
    running = RunningServer(url, f"{url}/v1", app, server)
    try:
        _wait(lambda: server.started, timeout, "the server did not start")
        if wait_ready:
            svc = running.service
            _wait(lambda: svc.state in ("ready", "failed"), timeout, "the model did not load")
            if svc.state == "failed":
                msg = f"the model {config.model} failed to load: {svc.error}"
                raise RuntimeError(msg) from svc.error
        yield running
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def _wait(done: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():  # type: ignore[operator]
        if time.monotonic() > deadline:
            msg = f"{what} within {timeout:g} s"
            raise RuntimeError(msg)
        time.sleep(0.02)
