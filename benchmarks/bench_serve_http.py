"""HTTP load test of ``bge-icl serve``, and infinity-emb side by side on the same checkpoint and load.

Load: 256 requests from 32 concurrent clients (each an ``openai.AsyncOpenAI`` client, ``max_retries=0``, on
127.0.0.1), 8 requests per client in turn. Request ``i`` asks for 1-8 texts, alternately queries of the
``web-search`` example set, passages, zero-shot queries (the served name) and passages. Every vector is checked
against the local embedder's (``ICLEmbedder`` in this process, brute force over every text); a request that fails
or returns a wrong vector is counted, none is retried. Figures: requests/s, texts/s, p50/p99 latency, and the mean
rows per forward pass (``bge_icl_rows_total`` / ``bge_icl_forward_passes_total`` from ``/metrics``).

infinity-emb (``.venv-infinity``, ``make bench-serve`` installs it) serves the same checkpoint as a
sentence-transformers model; it knows no few-shot examples, so its queries are sent as whole prompt text (the
few-shot prefix, the instruction-formatted query and the suffix, as one string). Each server runs alone, as a
subprocess, one after the other in the same run.

Checkpoint: the benchmarks' "medium" random-weight MistralModel (hidden 512, 8 layers, 8 heads / 2 KV heads,
intermediate 1792, bge-en-icl's tokenizer), built into ``.cache/bench-medium``. ``bge-icl serve`` runs in its default
dtype (``auto``: bfloat16 on a CPU with bf16 units, reported as ``bge_icl_dtype``) and its vectors are checked against
the local embedder's in that dtype (within 1e-5 in float32, 1e-2 in bfloat16); infinity-emb runs float32, checked
against float32 vectors.

Usage: ``python benchmarks/bench_serve_http.py [--requests 256] [--concurrency 32] [--infinity auto|none|PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("protein summit mountain network interface virtual machine pain muscle river ocean forest city "
         "valley glacier harbour bridge engine library garden").split()  # fmt: skip
SERVED = "bench"
SET = "web-search"


@dataclass(frozen=True)
class Call:
    """One request of the load: a model id, ``"query"`` or ``"passage"``, its texts."""

    model: str
    input_type: str
    texts: tuple[str, ...]


@dataclass
class LoadResult:
    """What a load run saw: per-request latency and outcome, wall time, the vectors received."""

    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    vectors: dict[int, np.ndarray] = field(default_factory=dict)  # request index -> (n, D)
    seconds: float = 0.0

    def summary(self, calls: Sequence[Call]) -> dict[str, float]:
        lat = np.asarray(self.latencies) * 1000
        texts = sum(len(c.texts) for i, c in enumerate(calls) if i in self.vectors)
        return {
            "requests": len(calls),
            "answered": len(self.vectors),
            "failed": len(self.failures),
            "seconds": round(self.seconds, 2),
            "requests_per_s": round(len(self.vectors) / self.seconds, 1),
            "texts_per_s": round(texts / self.seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1) if lat.size else float("nan"),
            "p99_ms": round(float(np.percentile(lat, 99)), 1) if lat.size else float("nan"),
        }


def workload(n: int = 256, seed: int = 0, served: str = SERVED) -> list[Call]:
    """``n`` requests of 1-8 texts: web-search queries, passages, zero-shot queries, passages, in turn."""
    rng = random.Random(seed)
    kinds = [(SET, "query"), (served, "passage"), (served, "query"), (SET, "passage")]
    calls = []
    for i in range(n):
        model, input_type = kinds[i % 4]
        words = (3, 14) if input_type == "query" else (20, 80)
        texts = tuple(" ".join(rng.choices(WORDS, k=rng.randint(*words))) for _ in range(rng.randint(1, 8)))
        calls.append(Call(model, input_type, texts))
    return calls


async def run_load(api_url: str, calls: Sequence[Call], concurrency: int = 32, api_key: str = "unused",
                   timeout: float = 300.0, texts_of: Any = None, max_retries: int = 0,
                   statuses: Counter[int] | None = None) -> LoadResult:  # fmt: skip
    """Send ``calls`` from ``concurrency`` clients, each its share in turn; no retries.

    Args:
        api_url: The server's ``/v1`` URL.
        calls: The requests.
        concurrency: Clients, each an ``openai.AsyncOpenAI`` with its own connection pool.
        api_key: Sent as the bearer key.
        timeout: Seconds per request.
        texts_of: ``Call -> (model, texts, extra_body)`` to send instead (infinity: prompt text, no input_type).
        max_retries: The ``openai`` client's own retries (0: a failed request counts as failed).
        statuses: Counts every HTTP status the clients receive, retried attempts included.
    """
    import httpx
    import openai

    result = LoadResult()

    async def client_loop(k: int) -> None:
        async def count(response: httpx.Response) -> None:
            if statuses is not None:
                statuses[response.status_code] += 1

        http = httpx.AsyncClient(event_hooks={"response": [count]}, timeout=timeout)
        client = openai.AsyncOpenAI(base_url=api_url, api_key=api_key, max_retries=max_retries, timeout=timeout,
                                    http_client=http)  # fmt: skip
        try:
            for i in range(k, len(calls), concurrency):
                call = calls[i]
                model, texts, extra = texts_of(call) if texts_of else (call.model, list(call.texts),
                                                                       {"input_type": call.input_type})  # fmt: skip
                start = time.perf_counter()
                try:
                    response = await client.embeddings.create(model=model, input=texts, extra_body=extra)
                except Exception as e:  # noqa: BLE001 - every failure is counted, whatever it is
                    result.failures.append(f"request {i}: {type(e).__name__}: {e}")
                    continue
                result.latencies.append(time.perf_counter() - start)
                result.vectors[i] = np.asarray([d.embedding for d in response.data], dtype=np.float32)
        finally:
            await client.close()

    start = time.perf_counter()
    await asyncio.gather(*(client_loop(k) for k in range(concurrency)))
    result.seconds = time.perf_counter() - start
    return result


def expected_vectors(embedders: dict[str, Any], calls: Sequence[Call]) -> dict[int, np.ndarray]:
    """Each request's vectors from the local embedders: every distinct text of a (model, kind) embedded once."""
    pools: dict[tuple[str, str], list[str]] = {}
    for c in calls:
        key = (SET if c.input_type == "passage" else c.model, c.input_type)
        pools.setdefault(key, [])
        pools[key].extend(t for t in c.texts if t not in pools[key])
    table: dict[tuple[str, str, str], np.ndarray] = {}
    for (model, input_type), texts in pools.items():
        emb = embedders[model]
        vectors = emb.encode_queries(texts) if input_type == "query" else emb.encode_corpus(texts)
        table.update({(model, input_type, t): v for t, v in zip(texts, vectors, strict=True)})
    return {i: np.stack([table[(SET if c.input_type == "passage" else c.model, c.input_type, t)] for t in c.texts])
            for i, c in enumerate(calls)}  # fmt: skip


def wrong_vectors(result: LoadResult, expected: dict[int, np.ndarray], atol: float = 1e-5) -> tuple[list[int], float]:
    """Requests whose vectors differ from the expected ones by more than ``atol``, and the largest difference."""
    worst, wrong = 0.0, []
    for i, got in result.vectors.items():
        diff = float(np.abs(got - expected[i]).max()) if got.shape == expected[i].shape else float("inf")
        worst = max(worst, diff)
        if diff > atol:
            wrong.append(i)
    return wrong, worst


def metric(text: str, name: str) -> float:
    """A sample's value in Prometheus text; 0 when absent (a labelled counter appears once it counts)."""
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


# -- the servers, as subprocesses ----------------------------------------------------------------------


def _wait_health(url: str, proc: subprocess.Popen[Any], timeout: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            msg = f"the server exited with {proc.returncode} before it was ready"
            raise RuntimeError(msg)
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            msg = f"{url} did not answer 200 within {timeout} s"
            raise RuntimeError(msg)
        time.sleep(0.2)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_bge_icl(checkpoint: str, calls: Sequence[Call], concurrency: int, expected: dict[int, np.ndarray],
                  atol: float) -> dict:  # type: ignore[type-arg]  # fmt: skip
    import httpx

    port = _free_port()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "bge_icl_cli", "serve", "--model", checkpoint, "--devices", "cpu",  # dtype: auto
           "--served-name", SERVED, "--examples", SET, "--port", str(port), "-q"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_health(f"{url}/health", proc)
        before = httpx.get(f"{url}/metrics").text
        result = asyncio.run(run_load(f"{url}/v1", calls, concurrency))
        after = httpx.get(f"{url}/metrics").text
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
    rows = metric(after, "bge_icl_rows_total") - metric(before, "bge_icl_rows_total")
    passes = metric(after, "bge_icl_forward_passes_total") - metric(before, "bge_icl_forward_passes_total")
    wrong, worst = wrong_vectors(result, expected, atol)
    return {**result.summary(calls), "atol": atol, "wrong_vectors": len(wrong), "max_abs_diff": worst,
            "exit_code": code,
            "rows_per_forward_pass": round(rows / passes, 2) if passes else None,
            "failures": result.failures[:5]}  # fmt: skip


def bench_infinity(binary: str, checkpoint: str, calls: Sequence[Call], concurrency: int, embedders: dict[str, Any],
                   expected: dict[int, np.ndarray]) -> dict:  # type: ignore[type-arg]  # fmt: skip
    from bge_icl.prompts import format_query

    port = _free_port()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1",
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    cmd = [binary, "v2", "--model-id", checkpoint, "--served-model-name", SERVED, "--engine", "torch",
           "--device", "cpu", "--dtype", "float32", "--batch-size", "32", "--no-bettertransformer",
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip

    def prompt_text(call: Call) -> tuple[str, list[str], dict[str, Any]]:
        if call.input_type == "passage":
            return SERVED, list(call.texts), {}
        o = embedders[call.model].options
        whole = [embedders[call.model].prefix + format_query(t, o.query_instruction_for_retrieval,
                                                              o.query_instruction_format) + o.suffix
                 for t in call.texts]  # fmt: skip
        return SERVED, whole, {}

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_health(f"http://127.0.0.1:{port}/health", proc)
        result = asyncio.run(run_load(f"http://127.0.0.1:{port}", calls, concurrency, texts_of=prompt_text))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    wrong, worst = wrong_vectors(result, expected, atol=1e-4)
    by_kind: dict[str, float] = {}
    for i, got in result.vectors.items():  # queries of an example set: tokenized whole, not piecewise as bge-icl
        kind = "passage" if calls[i].input_type == "passage" else f"query ({calls[i].model})"
        by_kind[kind] = max(by_kind.get(kind, 0.0), float(np.abs(got - expected[i]).max()))
    return {**result.summary(calls), "vectors_off_by_more_than_1e-4": len(wrong), "max_abs_diff": worst,
            "max_abs_diff_by_kind": by_kind, "failures": result.failures[:5]}  # fmt: skip


def checkpoint(path: Path) -> str:
    """The benchmarks' medium checkpoint (as ``bench_cpu.py``), built once into ``path``."""
    from bge_icl.testing import build_checkpoint

    if not (path / "config.json").is_file():
        build_checkpoint(path, seed=0, hidden_size=512, intermediate_size=1792, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=2)  # fmt: skip
    return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--checkpoint", default=str(ROOT / ".cache" / "bench-medium"))
    parser.add_argument("--infinity", default="auto", help="infinity_emb binary; auto = .venv-infinity's; none = skip")
    parser.add_argument("--record", default=None, help="append the run's figures (JSON) to this file")
    args = parser.parse_args(argv)

    import torch
    from report import append_record

    from bge_icl import WEB_SEARCH_INSTRUCTION, ICLEmbedder
    from bge_icl_server.config import load_example_set

    ckpt = checkpoint(Path(args.checkpoint))
    web = load_example_set(SET)
    common = {"devices": "cpu", "dtype": "float32", "show_progress": False}
    embedders = {SERVED: ICLEmbedder(ckpt, **common),
                 SET: ICLEmbedder(ckpt, examples_for_task=web.examples, query_instruction_for_retrieval=web.instruction,
                                  **common)}  # fmt: skip
    auto = {name: emb.with_options(dtype="auto") for name, emb in embedders.items()}  # what `bge-icl serve` runs
    dtype = str(auto[SERVED].torch_dtype).removeprefix("torch.")
    assert web.instruction == WEB_SEARCH_INSTRUCTION
    calls = workload(args.requests)
    expected = expected_vectors(embedders, calls)  # float32: infinity-emb's
    expected_auto = expected if dtype == "float32" else expected_vectors(auto, calls)
    run: dict[str, Any] = {
        "benchmark": "serve-http",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} torch threads",
        "load": f"{args.requests} requests from {args.concurrency} concurrent clients, "
                f"{sum(len(c.texts) for c in calls)} texts",
        "bge_icl_dtype": f"auto: {dtype}",
    }  # fmt: skip
    print(json.dumps(run), flush=True)
    # A row's vector in a shared pass matches a solo call's within 1e-5 in float32, within bf16's rounding (1e-2) else.
    atol = 1e-5 if dtype == "float32" else 1e-2
    run["bge_icl"] = bench_bge_icl(ckpt, calls, args.concurrency, expected_auto, atol)
    print("bge-icl serve:", json.dumps(run["bge_icl"]), flush=True)
    binary = str(ROOT / ".venv-infinity" / "bin" / "infinity_emb") if args.infinity == "auto" else args.infinity
    if args.infinity != "none" and Path(binary).is_file():
        run["infinity"] = bench_infinity(binary, ckpt, calls, args.concurrency, embedders, expected)
        print("infinity-emb:", json.dumps(run["infinity"]), flush=True)
    else:
        run["infinity"] = f"not run: {binary} not found"
        print(run["infinity"])
    if args.record:
        append_record(args.record, run)
    return 0 if run["bge_icl"]["failed"] == 0 and run["bge_icl"]["wrong_vectors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
