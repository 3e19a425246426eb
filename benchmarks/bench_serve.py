"""Many callers, one model (in process): dynamic batching throughput and a small call's latency behind a big one.

Same checkpoint as ``bench_cpu.py`` (random-weight MistralModel, hidden 512, 8 layers, 8 heads / 2 KV heads,
intermediate 1792, bge-en-icl's real tokenizer), in the default dtype (``dtype="auto"``: bfloat16 on a CPU with bf16
units, else float32; reported), the model card's two web-search examples.

1. **Throughput.** 64 single-query calls at once, against one ``encode_queries`` call of the same 64 queries (the
   best a caller can do by batching itself): 64 threads calling ``encode_queries([q])``; 64 LangChain
   ``aembed_query`` tasks; 64 LlamaIndex ``aget_query_embedding`` tasks. Target: at least 0.7 times the queries/s of
   the one call. Also: rows per forward pass, and the largest difference from the one call's vectors.
2. **A small call behind a big one.** The latency of one query alone (median of 20), then of queries submitted one
   at a time, at spaced moments, while a 2,000-passage ``aembed`` corpus call runs (cancelled once they are done).
   Target: at most 10 times the latency alone.

Runs in ``.venv``: ``make bench-serve`` (which also runs the HTTP load test, ``bench_serve_http.py``). With
``PYTHONPATH`` pointing at an older checkout (before the scheduler: no ``aembed``), the same workload runs on it for
a side-by-side figure: the corpus call then runs in a thread to its end, and rows per pass are not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bge_icl import WEB_SEARCH_INSTRUCTION, ICLEmbedder
from bge_icl.quickstart import EXAMPLES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu import WORDS  # the same vocabulary as the CPU benchmark
from bench_prefix import checkpoint  # the same medium checkpoint
from report import report, run_header


def texts(n: int, low: int, high: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(low, high))) for _ in range(n)]


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def throughput(emb: ICLEmbedder, queries: list[str], repeats: int) -> dict[str, Any]:
    """Queries/s of one call of all queries, and of one call per query from threads and from both adapters."""
    from langchain_bge_icl import BgeIclEmbeddings
    from llamaindex_bge_icl import BgeIclEmbedding

    langchain, llamaindex = BgeIclEmbeddings.from_embedder(emb), BgeIclEmbedding.from_embedder(emb)
    n = len(queries)

    def batched() -> np.ndarray:
        return np.asarray(emb.encode_queries(queries))

    def threads() -> np.ndarray:
        out: list[Any] = [None] * n
        barrier = threading.Barrier(n)

        def one(i: int) -> None:
            barrier.wait()
            out[i] = emb.encode_queries([queries[i]])[0]

        workers = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return np.stack(out)

    def langchain_tasks() -> np.ndarray:
        async def run() -> list[list[float]]:
            return await asyncio.gather(*(langchain.aembed_query(q) for q in queries))

        return np.asarray(asyncio.run(run()), dtype=np.float32)

    def llamaindex_tasks() -> np.ndarray:
        async def run() -> list[list[float]]:
            return await asyncio.gather(*(llamaindex.aget_query_embedding(q) for q in queries))

        return np.asarray(asyncio.run(run()), dtype=np.float32)

    results: dict[str, Any] = {}
    reference = batched()
    for name, fn in (("one call", batched), ("threads", threads), ("LangChain aembed_query", langchain_tasks),
                     ("LlamaIndex aget_query_embedding", llamaindex_tasks)):  # fmt: skip
        best, delta, rows_per_pass = float("inf"), 0.0, 0.0
        for _ in range(repeats):
            before = getattr(emb, "scheduler_stats", None)  # None: a checkout from before the scheduler
            seconds, vectors = timed(fn)
            after = getattr(emb, "scheduler_stats", None)
            if seconds < best:
                best = seconds
                if before is not None and after is not None:
                    passes = max(1, after.forward_passes - before.forward_passes)
                    rows_per_pass = (sum(after.replica_rows) - sum(before.replica_rows)) / passes
            delta = max(delta, float(np.abs(vectors - reference).max()))
        results[name] = {"queries_per_s": round(n / best, 1), "rows_per_pass": round(rows_per_pass, 1),
                         "max_abs_delta": delta}  # fmt: skip
    base = results["one call"]["queries_per_s"]
    for name in list(results)[1:]:
        results[name]["ratio_to_one_call"] = round(results[name]["queries_per_s"] / base, 2)
    return results


def latency(emb: ICLEmbedder, corpus_emb: ICLEmbedder, queries: list[str], passages: list[str]) -> dict[str, Any]:
    """Median latency of one query alone, and of queries submitted while a corpus call runs."""
    alone = [timed(lambda q=q: emb.encode_queries([q]))[0] for q in queries[:20]]
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    cancellable = hasattr(corpus_emb, "aembed")
    if cancellable:
        corpus = asyncio.run_coroutine_threadsafe(corpus_emb.aembed(passages, "passages"), loop)
    else:  # before the scheduler: a thread, run to its end
        thread = threading.Thread(target=corpus_emb.encode_corpus, args=(passages,))
        thread.start()
    time.sleep(2.0)  # the corpus call is under way
    rng = random.Random(1)
    during = []
    for q in queries[20:40]:
        time.sleep(rng.uniform(0.0, 0.3))  # land at different moments of the corpus call's passes
        during.append(timed(lambda q=q: emb.encode_queries([q]))[0])
    if cancellable:
        corpus.cancel()  # its rows that have not run are dropped
        deadline = time.monotonic() + 60
        while corpus_emb.stats.queued_rows and time.monotonic() < deadline:
            time.sleep(0.01)
    else:
        thread.join()
    loop.call_soon_threadsafe(loop.stop)
    runner.join(10)
    base = statistics.median(alone)
    return {
        "alone_ms_median": round(1000 * base, 1),
        "during_corpus_ms_median": round(1000 * statistics.median(during), 1),
        "during_corpus_ms_max": round(1000 * max(during), 1),
        "ratio_median": round(statistics.median(during) / base, 1),
        "ratio_max": round(max(during) / base, 1),
        "corpus_passages": len(passages),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--passages", type=int, default=2000)
    parser.add_argument("--record", type=Path, help="append the figures as one JSON line to this file")
    args = parser.parse_args()
    results: dict[str, Any] = run_header()
    with tempfile.TemporaryDirectory() as tmp:
        path = checkpoint(Path(tmp))
        emb = ICLEmbedder(path, devices="cpu", show_progress=False, on_truncation="ignore",  # the default dtype
                          examples_for_task=EXAMPLES,
                          query_instruction_for_retrieval=WEB_SEARCH_INSTRUCTION)  # fmt: skip
        corpus_emb = emb.with_examples(None)  # passages do not depend on the examples
        queries = texts(args.queries, 3, 14, seed=0)
        emb.encode_queries(queries[:4]), corpus_emb.encode_corpus(queries[:4])  # warm-up, prefix cache
        results["defaults"] = {"max_batch_tokens": emb.token_budget, "batch_size": getattr(emb, "row_limit", None),
                               "dtype": f"auto: {str(emb.torch_dtype).removeprefix('torch.')}"}  # fmt: skip
        results["throughput_64_single_query_calls"] = throughput(emb, queries, args.repeats)
        results["latency_behind_a_corpus_call"] = latency(emb, corpus_emb, texts(40, 3, 14, seed=2),
                                                          texts(args.passages, 20, 300, seed=1))  # fmt: skip
    report(results, args.record)


if __name__ == "__main__":
    main()
