"""What an operator meets: the event loop is never blocked by one request, liveness and readiness as two routes
(GET and HEAD), the OpenAPI page, CORS only when asked for, ``dimensions`` refused unless allowed, and the log
line that says whether auth is on."""

from __future__ import annotations

import logging
import re
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bge_icl import ICLEmbedder
from bge_icl.testing import build_checkpoint
from bge_icl_server import EmbeddingService, RunningServer, ServerConfig, serve_in_thread
from tests.bge_icl_server.conftest import PASSAGES, SERVED, max_diff
from tests.bge_icl_server.test_errors import OK, check_error

MB_TEXT = "mountains and rivers, " * 47_000  # about 1 MB: seconds of tokenizing for 15 of them
WIDE = 4096  # bge-en-icl's width: the 4,096-d vectors


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server of a model as wide as bge-en-icl (vectors of 4,096), yet cheap to run: one layer, a 16-wide MLP and
    two heads of 16 (the 32,768 x 4,096 token embeddings are most of its 0.5 GB)."""
    path = build_checkpoint(tmp_path_factory.mktemp("wide-bge-icl"), hidden_size=WIDE, intermediate_size=16,
                            num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16)  # fmt: skip
    options = {"devices": "cpu", "dtype": "float32"}  # bfloat16, the CPU default, runs this model ~15x slower
    with serve_in_thread(ServerConfig(model=str(path), served_name=SERVED, options=options)) as running:
        yield running


def probe_while_answered(server: RunningServer, body: dict[str, object]) -> tuple[httpx.Response, list[float]]:
    """POSTs ``body`` to ``/v1/embeddings`` on a thread; the response, and the latency of each ``GET /health/live``
    due every ~20 ms until it came.

    A latency runs from when the probe was due, not from when it was sent: the server shares this process, so a
    thread that holds the GIL stalls the prober too, and may do it between two probes.
    """
    done: dict[str, httpx.Response] = {}
    call = threading.Thread(target=lambda: done.setdefault("r", httpx.post(
        f"{server.api_url}/embeddings", json=body, timeout=300)))  # fmt: skip
    call.start()
    latencies = []
    with httpx.Client(timeout=30) as client:
        due = time.perf_counter()
        while call.is_alive():
            assert client.get(f"{server.url}/health/live").status_code == 200
            latencies.append(time.perf_counter() - due)
            due = time.perf_counter() + 0.02
            time.sleep(0.02)
    call.join()
    return done["r"], latencies


def test_health_answers_while_a_heavy_request_is_tokenized(server: RunningServer) -> None:
    body = {"model": SERVED, "input": [MB_TEXT + str(i) for i in range(15)]}  # 15 MB: the bug's request
    answer, latencies = probe_while_answered(server, body)
    assert answer.status_code == 200 and len(answer.json()["data"]) == 15
    assert len(latencies) >= 10, "the request ended too soon to show anything"
    # Before the fix one probe waited for the whole tokenizing (seconds); generous bounds for a shared machine.
    assert statistics.median(latencies) < 0.1 and max(latencies) < 1.0, latencies


def test_health_answers_while_a_large_response_is_built(wide: RunningServer) -> None:
    texts = 1024  # 4.2 M floats: a 94 MB body, seconds of building (the 2,048 texts double all of it)
    body = {"model": SERVED, "input": [f"passage {i}" for i in range(texts)], "encoding_format": "float"}
    answer, latencies = probe_while_answered(wide, body)
    assert answer.status_code == 200, answer.text[:500]
    data = answer.json()["data"]
    assert len(data) == texts and {len(d["embedding"]) for d in data} == {WIDE}
    # Embedding the short texts takes a fraction of the time: most probes land while the body is built.
    assert len(latencies) >= 25, "the request ended too soon to show anything"
    # Built on the event loop, or by one json.dumps on a thread (it holds the GIL throughout), one probe waited for
    # the whole body (seconds); generous bounds for a shared machine.
    median, worst = statistics.median(latencies), max(latencies)
    assert median < 0.1 and worst < 1.0, f"{len(latencies)} probes: median {median:.3f} s, max {worst:.3f} s"


def test_liveness_and_readiness_are_two_routes_with_head(tiny_dir: Path) -> None:
    config = ServerConfig(model=str(tiny_dir), served_name=SERVED, options={"devices": "cpu"})
    service = EmbeddingService(config)  # loaded below, by hand
    with serve_in_thread(config, service=service, wait_ready=False) as running:
        for method in ("GET", "HEAD"):
            live = httpx.request(method, f"{running.url}/health/live")
            ready = httpx.request(method, f"{running.url}/health/ready")
            assert (live.status_code, ready.status_code) == (200, 503), method  # alive while the model loads
            assert ready.headers["retry-after"] == "1"
            if method == "HEAD":
                assert (live.content, ready.content) == (b"", b"")
            else:
                assert ready.json() == {"status": "new"}
        service.load()
        for method in ("GET", "HEAD"):
            for path in ("/health/live", "/health/ready", "/health"):
                assert httpx.request(method, f"{running.url}{path}").status_code == 200, (method, path)
        assert httpx.get(f"{running.url}/health/ready").json() == {"status": "ready"}


def test_the_openapi_page_is_on(server: RunningServer) -> None:
    schema = httpx.get(f"{server.url}/openapi.json").json()
    body = schema["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"model", "input", "encoding_format", "dimensions", "input_type", "truncate"}
    assert body["properties"]["encoding_format"]["enum"] == ["float", "base64"]
    assert "/health/live" in schema["paths"] and "/health/ready" in schema["paths"]
    page = httpx.get(f"{server.url}/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()


@pytest.fixture(scope="module")
def cors(tiny_dir: Path) -> Iterator[RunningServer]:
    config = ServerConfig(model=str(tiny_dir), served_name=SERVED, cors_origins=("https://app.example",),
                          options={"devices": "cpu"})  # fmt: skip
    with serve_in_thread(config) as running:
        yield running


def test_cors_is_opt_in(server: RunningServer, cors: RunningServer) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip
    allowed = httpx.options(f"{cors.api_url}/embeddings", headers=preflight)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example"
    answer = httpx.post(f"{cors.api_url}/embeddings", json=OK, headers={"Origin": "https://app.example"})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://app.example"
    other = httpx.options(f"{cors.api_url}/embeddings", headers={**preflight, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    off = httpx.options(f"{server.api_url}/embeddings", headers=preflight)  # the default: no CORS
    assert off.status_code == 405 and "access-control-allow-origin" not in off.headers


@pytest.fixture(scope="module")
def plain(tiny_dir: Path) -> Iterator[RunningServer]:
    """A server with the defaults (``dimensions`` below the model's not allowed)."""
    options = {"devices": "cpu", "dtype": "float32"}  # compared with local float32 vectors within 1e-5
    with serve_in_thread(ServerConfig(model=str(tiny_dir), served_name=SERVED, options=options)) as running:
        yield running


def test_dimensions_below_the_models_are_refused_unless_allowed(plain: RunningServer,
                                                                 local: dict[str, ICLEmbedder]) -> None:  # fmt: skip
    refused = httpx.post(f"{plain.api_url}/embeddings", json={**OK, "dimensions": 16})
    check_error(refused, 400, re.escape(
        "dimensions=16 is refused: this model is not trained for shortened vectors (their first dimensions are no "
        "smaller embedding), so send 64 or leave dimensions out; the operator can allow it with --allow-dimensions"),
        "dimensions")  # fmt: skip
    full = httpx.post(f"{plain.api_url}/embeddings", json={**OK, "dimensions": 64})
    assert max_diff([d["embedding"] for d in full.json()["data"]], local[SERVED].encode_corpus(PASSAGES)) <= 1e-5
    check_error(httpx.post(f"{plain.api_url}/embeddings", json={**OK, "dimensions": 65}), 400,
                re.escape("dimensions=65 is out of range; this model's vectors have 1 to 64 dimensions"),
                "dimensions")  # fmt: skip


def test_a_log_line_says_whether_auth_is_on(tiny_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    for key, line in ((None, "auth off: no API key"), ("k3y", "auth on: /v1/ needs 'Authorization: Bearer <key>'")):
        config = ServerConfig(model=str(tiny_dir), api_key=key, options={"devices": "cpu"})
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="bge_icl_server"):
            with serve_in_thread(config, service=EmbeddingService(config), wait_ready=False):
                pass
        assert line in [r.getMessage() for r in caplog.records], key
