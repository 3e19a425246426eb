"""pgvector's index limits at bge-en-icl's 4,096 dimensions, and the recipe that works: an HNSW index on
``binary_quantize(embedding)::bit(4096)``, then an exact re-rank of its candidates (docs/vector-stores.md).

The limits need 4,096-d vectors, so those tests use seeded random unit vectors (the limits depend on the width only);
the link between ``binary_quantize`` and our ``precision="ubinary"`` output uses the tiny model's vectors.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("psycopg")

import psycopg
from pgvector.psycopg import register_vector

from bge_icl import ICLEmbedder
from tests.stores.conftest import CORPUS, QUERIES, exact_top_k, random_unit_vectors
from tests.stores.recipe import bit_index_sql, recipe_sql, recipe_top_k

DIM = 4096  # bge-en-icl's width
N = 300


@pytest.fixture(scope="module")
def conn(postgres: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(postgres, autocommit=True) as conn:
        register_vector(conn)
        yield conn


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    """N seeded random unit vectors, float32, shape (N, DIM)."""
    return random_unit_vectors(N, DIM)


@pytest.fixture(scope="module")
def items(conn: psycopg.Connection, vectors: np.ndarray) -> str:
    """Table ``items_4096 (id, embedding vector(4096))`` holding ``vectors``, id = row number."""
    conn.execute(f"CREATE TABLE items_4096 (id bigint PRIMARY KEY, embedding vector({DIM}))")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO items_4096 VALUES (%s, %s)", list(enumerate(vectors)))
    return "items_4096"


@pytest.mark.parametrize(("column", "method", "ops", "limit"), [
    ("embedding", "hnsw", "vector_cosine_ops", 2000),
    ("embedding", "ivfflat", "vector_cosine_ops", 2000),
    (f"(embedding::halfvec({DIM}))", "hnsw", "halfvec_cosine_ops", 4000),
])  # fmt: skip
def test_float_indexes_refuse_4096_dimensions(
    conn: psycopg.Connection, items: str, column: str, method: str, ops: str, limit: int
) -> None:
    message = f"column cannot have more than {limit} dimensions for {method} index"
    with pytest.raises(psycopg.errors.ProgramLimitExceeded, match=re.escape(message)):
        conn.execute(f"CREATE INDEX ON {items} USING {method} ({column} {ops})")


SEARCH = recipe_sql("items_4096", "id", DIM)


@pytest.fixture(scope="module")
def bit_indexed(conn: psycopg.Connection, items: str) -> str:
    conn.execute(bit_index_sql(items, DIM))
    return items


def test_the_bit_index_serves_the_candidates(conn: psycopg.Connection, bit_indexed: str, vectors: np.ndarray) -> None:
    """The planner can answer the inner query from the index (forced here: at 300 rows a scan is cheaper)."""
    params = {"q": vectors[0], "candidates": 40, "k": 10}
    with conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + SEARCH, params))
    assert "Index Scan using items_4096_binary_quantize_idx on items_4096" in plan, plan


def test_rerank_is_exact_over_the_candidates(conn: psycopg.Connection, bit_indexed: str, vectors: np.ndarray) -> None:
    """With every row a candidate (ef_search >= N), the recipe's top 10 is brute force's."""
    for query in random_unit_vectors(5, DIM, seed=1):
        assert recipe_top_k(conn, SEARCH, query, candidates=N, k=10) == exact_top_k(vectors, query, k=10)


def test_binary_quantize_is_our_ubinary_output(conn: psycopg.Connection, core: ICLEmbedder) -> None:
    """``binary_quantize(v)`` keeps the bits ``v > 0``: storing ``precision="ubinary"`` as ``bit(D)`` is the same."""
    pytest.importorskip("sentence_transformers")
    texts = [*CORPUS, *QUERIES]
    floats = core.encode_corpus(texts)  # (N, D) float32
    packed = core.encode_corpus(texts, precision="ubinary")  # (N, D / 8) uint8
    for vector, bits in zip(floats, packed, strict=True):
        (stored,) = conn.execute("SELECT binary_quantize(%s::vector)::text", (vector,)).fetchone()
        assert stored == "".join(map(str, np.unpackbits(bits)))
