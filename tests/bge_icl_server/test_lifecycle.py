"""Readiness, admission and health: /health before the model is ready and after a failed load, a full queue,
a client that goes away, and a forward pass that keeps failing."""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from bge_icl import ICLEmbedder
from bge_icl_server import EmbeddingService, RunningServer, ServerConfig, serve_in_thread
from bge_icl_server.service import DrainRate
from tests.bge_icl_server.conftest import PASSAGES, SERVED, max_diff
from tests.bge_icl_server.test_errors import OK, check_error, still_answers


def test_health_is_503_until_the_model_is_loaded(tiny_dir: Path, local: dict[str, ICLEmbedder]) -> None:
    config = ServerConfig(model=str(tiny_dir), served_name=SERVED, options={"devices": "cpu", "dtype": "float32"})
    service = EmbeddingService(config)  # loaded below, by hand: the app does not load a service it was given
    with serve_in_thread(config, service=service, wait_ready=False) as running:
        response = httpx.get(f"{running.url}/health")
        assert (response.status_code, response.json(), response.headers["retry-after"]) == (503, {"status": "new"}, "1")
        embeddings = httpx.post(f"{running.api_url}/embeddings", json=OK)
        check_error(embeddings, 503, re.escape("the model is loading; retry once GET /health answers 200"), None,
                    "not_ready", "server_error")  # fmt: skip
        assert embeddings.headers["retry-after"] == "1"
        assert httpx.get(f"{running.api_url}/models").status_code == 200  # the ids are known before the model loads
        service.load()
        assert httpx.get(f"{running.url}/health").json() == {"status": "ready"}
        still_answers(running.url, local)


def test_a_failed_load_is_reported(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    config = ServerConfig(model=str(tmp_path / "empty"), options={"devices": "cpu", "dtype": "float32"})
    with pytest.raises(RuntimeError, match="failed to load") as raised:
        with serve_in_thread(config):
            pass
    assert isinstance(raised.value.__cause__, OSError)
    with serve_in_thread(config, wait_ready=False) as running:
        deadline = time.monotonic() + 30
        while running.service.state != "failed" and time.monotonic() < deadline:
            time.sleep(0.02)
        response = httpx.get(f"{running.url}/health")
        assert (response.status_code, response.json()) == (503, {"status": "failed"})
        check_error(httpx.post(f"{running.api_url}/embeddings", json={"model": "empty", "input": "x"}), 503,
                    re.escape("the model failed to load; see the server's log"), None, "not_ready",
                    "server_error")  # fmt: skip


@pytest.fixture(scope="module")
def queue_server(tiny_dir: Path) -> Iterator[RunningServer]:
    config = ServerConfig(model=str(tiny_dir), served_name=SERVED, max_queue_rows=6,
                          options={"devices": "cpu", "dtype": "float32"})
    with serve_in_thread(config) as running:
        yield running


def test_a_full_queue_is_a_503_with_retry_after(queue_server: RunningServer, local: dict[str, ICLEmbedder]) -> None:
    service = queue_server.service
    still_answers(queue_server.url, local)  # a first measure of the drain rate
    slow = {"model": SERVED, "input": ["mountains and rivers " * 100] * 40}  # seconds on this model
    result: dict[str, httpx.Response] = {}
    call = threading.Thread(target=lambda: result.setdefault("r", httpx.post(
        f"{queue_server.api_url}/embeddings", json=slow, timeout=120)))  # fmt: skip
    call.start()
    try:
        deadline = time.monotonic() + 60
        while service.queued_rows == 0:  # admitted on an empty queue, although past the limit alone
            assert time.monotonic() < deadline
            time.sleep(0.01)
        response = httpx.post(f"{queue_server.api_url}/embeddings", json=OK)  # 3 more: past 6
        body = response.json()["error"]
        wait = response.headers["retry-after"]
        busy = (rf"the server is busy: \d+ texts are queued and 3 more would pass its limit of 6; retry after "
                rf"{wait} s")  # fmt: skip
        check_error(response, 503, busy, None, "queue_full", "server_error")
        assert 1 <= int(wait) <= 60 and body["code"] == "queue_full"
    finally:
        call.join(120)
    assert result["r"].status_code == 200 and len(result["r"].json()["data"]) == 40
    assert service.queued_rows == 0
    still_answers(queue_server.url, local)


def test_retry_after_follows_the_measured_drain_rate() -> None:
    rate = DrainRate(window=30)
    assert rate.seconds_for(100) == 1  # nothing measured yet
    rate.sample(0, now=0.0)
    rate.sample(50, now=10.0)  # 5 texts a second
    assert rate.seconds_for(100) == 20 and rate.seconds_for(1) == 1 and rate.seconds_for(10_000) == 60
    rate.sample(50, now=100.0)  # the old samples leave the window: nothing measured again
    assert rate.seconds_for(100) == 1


def test_a_client_that_goes_away_frees_its_rows(queue_server: RunningServer, local: dict[str, ICLEmbedder]) -> None:
    slow = {"model": SERVED, "input": ["mountains and rivers " * 100] * 200}  # seconds on this model
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{queue_server.api_url}/embeddings", json=slow, timeout=httpx.Timeout(60, read=0.3))
    deadline = time.monotonic() + 60
    while 'code="499"' not in httpx.get(f"{queue_server.url}/metrics").text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert queue_server.service.queued_rows == 0
    still_answers(queue_server.url, local)


def test_a_forward_pass_that_keeps_failing_makes_the_server_unhealthy(tiny_dir: Path, tmp_path: Path) -> None:
    model = shutil.copytree(tiny_dir, tmp_path / "copy")  # its own weights: breaking them leaves the others alone
    config = ServerConfig(model=str(model), served_name=SERVED, options={"devices": "cpu", "dtype": "float32"})
    with serve_in_thread(config) as running:
        layer = running.service.embedder(SERVED, "passages").replicas[0].model.layers[0].mlp.up_proj
        weight = layer.weight
        layer.weight = torch.nn.Parameter(torch.zeros(3, 3))  # every forward pass now fails (a shape mismatch)
        try:
            for attempt in range(3):
                assert httpx.get(f"{running.url}/health").status_code == 200, attempt
                response = httpx.post(f"{running.api_url}/embeddings", json=OK, headers={"X-Request-ID": "r1"})
                check_error(response, 500, re.escape("the server failed on this request (RuntimeError); see its log "
                                                     "for request r1"), None, None, "server_error")  # fmt: skip
                assert response.headers["x-request-id"] == "r1"  # a 500 too carries the id its message names
            health = httpx.get(f"{running.url}/health")
            assert (health.status_code, health.json()) == (503, {"status": "unhealthy"})
        finally:
            layer.weight = weight
        expected = ICLEmbedder(str(model), devices="cpu", dtype="float32", show_progress=False).encode_corpus(PASSAGES)
        response = httpx.post(f"{running.api_url}/embeddings", json=OK)
        assert max_diff([d["embedding"] for d in response.json()["data"]], expected) <= 1e-5
        assert httpx.get(f"{running.url}/health").status_code == 200  # a success resets the count


def test_concurrent_requests_all_answer(queue_server: RunningServer, local: dict[str, ICLEmbedder]) -> None:
    results: dict[int, httpx.Response] = {}

    def call(i: int) -> None:
        body = {"model": SERVED, "input": [PASSAGES[i % 3]]}
        results[i] = httpx.post(f"{queue_server.api_url}/embeddings", json=body, timeout=60)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    expected = local[SERVED].encode_corpus(PASSAGES)
    codes = sorted(r.status_code for r in results.values())
    assert len(results) == 12 and set(codes) <= {200, 503}
    for i, r in results.items():
        if r.status_code == 200:
            assert max_diff(r.json()["data"][0]["embedding"], expected[i % 3]) <= 1e-5
        else:
            assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["code"] == "queue_full"
