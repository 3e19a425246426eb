"""docs/vector-stores.md's pgvector recipe, for the pgvector tests of both adapters and of plain SQL: a bit index over
the sign bits of a store's own table, a Hamming-distance candidate search and an exact cosine re-rank; and the
SQLAlchemy URL of the test server."""

from __future__ import annotations

from typing import Any

from tests.stores.conftest import K


def bit_index_sql(table: str, dim: int) -> str:
    """docs/vector-stores.md's index: HNSW over the sign bits of ``table.embedding`` (``vector(dim)``)."""
    return f"CREATE INDEX ON {table} USING hnsw ((binary_quantize(embedding)::bit({dim})) bit_hamming_ops)"


def recipe_sql(table: str, column: str, dim: int, where: str = "TRUE") -> str:
    """docs/vector-stores.md's query: ``%(candidates)s`` rows of ``table`` (those matching ``where``) by Hamming
    distance of the sign bits, re-ranked by exact cosine; returns ``column`` of the top ``%(k)s`` for ``%(q)s``."""
    return f"""
SELECT {column} FROM (
    SELECT {column}, embedding FROM {table} WHERE {where}
    ORDER BY binary_quantize(embedding)::bit({dim}) <~> binary_quantize(%(q)s::vector({dim}))
    LIMIT %(candidates)s
) AS candidates
ORDER BY embedding <=> %(q)s::vector({dim})
LIMIT %(k)s
"""


def recipe_top_k(conn: Any, sql: str, query: Any, candidates: int, k: int = K) -> list[Any]:
    """Run ``recipe_sql``'s query (``hnsw.ef_search`` raised to ``candidates``): the first column of each row."""
    conn.execute(f"SET hnsw.ef_search = {max(40, candidates)}")
    return [row[0] for row in conn.execute(sql, {"q": query, "candidates": candidates, "k": k}).fetchall()]


def sqlalchemy_url(uri: str, driver: str = "psycopg") -> str:
    """``uri`` (``postgresql://...``) with a SQLAlchemy driver: ``psycopg`` (3) or ``asyncpg``."""
    return uri.replace("postgresql://", f"postgresql+{driver}://", 1)
