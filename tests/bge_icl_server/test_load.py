"""The load test of ``benchmarks/bench_serve_http.py`` on the tiny checkpoint: 256 requests from 32 concurrent
``openai`` clients (no retries), none lost, every vector equal to the local embedder's. The figures in
docs/benchmarks.md come from the same code on the medium checkpoint (``make bench-serve``)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from bge_icl import ICLEmbedder
from bge_icl_server import RunningServer
from tests.bge_icl_server.conftest import SERVED

pytest.importorskip("openai")
ROOT = Path(__file__).resolve().parents[2]


def bench_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_serve_http", ROOT / "benchmarks" / "bench_serve_http.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_256_requests_from_32_clients(server: RunningServer, local: dict[str, ICLEmbedder]) -> None:
    bench = bench_module()
    calls = bench.workload(256, served=SERVED)
    assert len(calls) == 256 and {c.model for c in calls} == {SERVED, "web-search"}
    expected = bench.expected_vectors(local, calls)
    before = httpx.get(f"{server.url}/metrics").text
    result = asyncio.run(asyncio.wait_for(bench.run_load(server.api_url, calls, concurrency=32), timeout=240))
    after = httpx.get(f"{server.url}/metrics").text
    assert result.failures == [] and len(result.vectors) == 256 and len(result.latencies) == 256
    wrong, worst = bench.wrong_vectors(result, expected)
    assert wrong == [] and worst <= 1e-5

    def delta(name: str) -> float:
        return bench.metric(after, name) - bench.metric(before, name)

    assert delta("bge_icl_rows_total") == sum(len(c.texts) for c in calls)
    ok = 'bge_icl_requests_total{{code="200",model="{}",route="/v1/embeddings"}}'
    assert delta(ok.format(SERVED)) + delta(ok.format("web-search")) == 256  # counted per model id
    assert 1 <= delta("bge_icl_forward_passes_total") <= 256 * 8
    summary = result.summary(calls)
    assert summary["answered"] == 256 and summary["failed"] == 0 and summary["p50_ms"] <= summary["p99_ms"]
