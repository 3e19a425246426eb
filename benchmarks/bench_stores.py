"""pgvector at 4,096 dimensions: recall@10 and query latency of the binary-quantize recipe against exact search.

pgvector indexes ``vector`` up to 2,000 dimensions and ``halfvec`` up to 4,000, so a bge-en-icl column gets no float
index. The recipe (docs/vector-stores.md): keep the full ``vector(4096)``, build HNSW on
``binary_quantize(embedding)::bit(4096)`` (Hamming distance over the sign bits), fetch ``candidates`` rows from it and
re-rank them by exact cosine distance. Recall@10 is measured against exact search (``ORDER BY embedding <=> q``, a
sequential scan, checked against numpy brute force), for several candidate counts.

Vectors: 4,096-d, from a random-weight MistralModel with bge-en-icl's width (hidden 4096, 1 layer, 4 heads of 32,
intermediate 128, bge-en-icl's real tokenizer, float32). Its vectors are not the real model's: random weights cluster
passages differently (and more tightly), so recall here says how the recipe behaves on 4,096-d vectors of this shape,
not what bge-en-icl itself reaches. Corpus: ``--passages`` short passages (6-14 words) through the passage path;
queries (3-8 words) through the query path with the model card's two examples. PostgreSQL 18 + pgvector 0.8.2 from
``pgserver`` (no network, no root needed). Runs in ``.venv``: ``make bench-stores``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from report import report, run_header

from bge_icl import WEB_SEARCH_INSTRUCTION, ICLEmbedder
from bge_icl.quickstart import DOCUMENTS, EXAMPLES, QUERIES
from bge_icl.testing import build_checkpoint

DIM = 4096
CANDIDATES = (10, 40, 100, 200, 400)
K = 10
_EXTRA = """river ocean forest city train bridge garden winter summer music painting museum library school
doctor engine battery solar wind energy market price bank coffee bread cheese apple orange football tennis
election parliament court law history war peace science physics chemistry biology planet star galaxy moon
computer software network server database memory storage cloud phone camera video game movie book novel poem"""
WORDS = sorted({w.strip(".,;:()?'\"").lower() for t in [*DOCUMENTS, *QUERIES, _EXTRA] for w in t.split()} - {""})


def texts(n: int, low: int, high: int, seed: int) -> list[str]:
    """``n`` random word sequences of ``low``-``high`` words (unique)."""
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        out[" ".join(rng.choices(WORDS, k=rng.randint(low, high)))] = None
    return list(out)


def checkpoint(root: Path) -> str:
    """A random-weight checkpoint whose vectors are 4,096-d, cheap enough to embed 20,000 passages on a CPU."""
    sizes = {"intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2}
    return str(build_checkpoint(root / "bench-4096", seed=0, hidden_size=DIM, head_dim=32, **sizes))


def embed(path: str, passages: list[str], queries: list[str]) -> tuple[np.ndarray, np.ndarray, float]:
    """(passage vectors (N, DIM), query vectors (Q, DIM), passages per second)."""
    emb = ICLEmbedder(path, devices="cpu", examples_for_task=EXAMPLES,
                      query_instruction_for_retrieval=WEB_SEARCH_INSTRUCTION)  # fmt: skip
    start = time.perf_counter()
    docs = emb.encode_corpus(passages)
    rate = len(passages) / (time.perf_counter() - start)
    return docs, emb.encode_queries(queries), rate


def load(conn: Any, docs: np.ndarray) -> None:
    """Table ``items (id bigint, embedding vector(4096))``, filled by binary COPY."""
    conn.execute("DROP TABLE IF EXISTS items")
    conn.execute(f"CREATE TABLE items (id bigint PRIMARY KEY, embedding vector({DIM}))")
    with conn.cursor() as cur, cur.copy("COPY items (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
        copy.set_types(["int8", "vector"])
        for i, vector in enumerate(docs):
            copy.write_row((i, vector))
    conn.execute("VACUUM ANALYZE items")


EXACT = "SELECT id FROM items ORDER BY embedding <=> %(q)s LIMIT %(k)s"
RECIPE = f"""
SELECT id FROM (
    SELECT id, embedding FROM items
    ORDER BY binary_quantize(embedding)::bit({DIM}) <~> binary_quantize(%(q)s::vector({DIM}))
    LIMIT %(candidates)s
) AS candidates
ORDER BY embedding <=> %(q)s::vector({DIM})
LIMIT %(k)s
"""


def run(conn: Any, sql: str, queries: np.ndarray, **params: Any) -> tuple[list[list[int]], float]:
    """Every query's ids, and the median latency in ms (after one warm-up query)."""
    conn.execute(sql, {"q": queries[0], "k": K, **params}).fetchall()
    ids, times = [], []
    for q in queries:
        start = time.perf_counter()
        rows = conn.execute(sql, {"q": q, "k": K, **params}).fetchall()
        times.append(time.perf_counter() - start)
        ids.append([r[0] for r in rows])
    return ids, 1000 * statistics.median(times)


def recall(found: list[list[int]], exact: list[list[int]]) -> float:
    return float(np.mean([len(set(f) & set(e)) / K for f, e in zip(found, exact, strict=True)]))


def measure(conn: Any, docs: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {}
    truth = np.argsort(-(queries @ docs.T), axis=1, kind="stable")[:, :K].tolist()  # (Q, K) numpy brute force
    exact, out["exact_ms_p50"] = run(conn, EXACT, queries)
    out["exact_recall_vs_numpy"] = round(recall(exact, truth), 4)
    start = time.perf_counter()
    conn.execute(f"CREATE INDEX ON items USING hnsw ((binary_quantize(embedding)::bit({DIM})) bit_hamming_ops)")
    out["bit_index_build_s"] = round(time.perf_counter() - start, 1)
    for candidates in CANDIDATES:
        conn.execute(f"SET hnsw.ef_search = {max(40, candidates)}")
        found, ms = run(conn, RECIPE, queries, candidates=candidates)
        plan = conn.execute("EXPLAIN " + RECIPE, {"q": queries[0], "k": K, "candidates": candidates}).fetchall()
        out[f"recipe_{candidates}_uses_index"] = any("items_binary_quantize_idx" in row[0] for row in plan)
        out[f"recipe_{candidates}_recall_at_10"] = round(recall(found, exact), 4)
        out[f"recipe_{candidates}_ms_p50"] = round(ms, 2)
    out["exact_ms_p50"] = round(out["exact_ms_p50"], 2)
    return out


def main() -> None:
    import pgserver
    import psycopg
    from pgvector.psycopg import register_vector

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--passages", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--record", type=Path, help="append the figures to this JSON-lines file")
    args = parser.parse_args()
    results: dict[str, Any] = {**run_header(), "passages": args.passages, "queries": args.queries}
    with tempfile.TemporaryDirectory() as tmp:
        docs, queries, results["passages_per_s"] = embed(checkpoint(Path(tmp)), texts(args.passages, 6, 14, 0),
                                                         texts(args.queries, 3, 8, 1))  # fmt: skip
        server = pgserver.get_server(Path(tmp) / "pgdata", cleanup_mode="delete")
        results["software"] += ", " + server.psql("SELECT version()").splitlines()[2].strip().split(" on ")[0]
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            register_vector(conn)
            version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
            results["pgvector"] = version[0] if version else None
            load(conn, docs)
            results.update(measure(conn, docs, queries))
        server.cleanup()
    results["passages_per_s"] = round(results["passages_per_s"], 1)
    report(results, args.record)


if __name__ == "__main__":
    main()
