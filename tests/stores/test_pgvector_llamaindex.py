"""LlamaIndex's ``PGVectorStore`` with ``BgeIclEmbedding``, on the session's PostgreSQL + pgvector: an index built,
searched, with nodes deleted and the table reloaded ranks as brute force over the core's vectors does (queries on
the query path, passages on the passage path); the bit-index recipe works on PGVectorStore's own table too."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_index.vector_stores.postgres")

import psycopg
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores import VectorStoreQuery
from llama_index.vector_stores.postgres import PGVectorStore

from llamaindex_bge_icl import BgeIclEmbedding
from tests.stores.conftest import CORPUS, QUERIES, BruteForce, K, Search, ids, random_unit_vectors
from tests.stores.recipe import bit_index_sql, recipe_sql, recipe_top_k, sqlalchemy_url


@pytest.fixture(scope="module")
def embed_model(tiny_dir: Path, options: dict[str, Any]) -> BgeIclEmbedding:
    return BgeIclEmbedding(model_name=str(tiny_dir), **options)


def open_store(postgres: str, table: str, dimension: int, **kwargs: Any) -> PGVectorStore:
    """A PGVectorStore on table ``data_<table>`` (created if missing), ``vector(dimension)`` column."""
    return PGVectorStore.from_params(
        connection_string=sqlalchemy_url(postgres),
        async_connection_string=sqlalchemy_url(postgres, "psycopg"),
        table_name=table,
        embed_dim=dimension,
        **kwargs,
    )


def build_index(postgres: str, table: str, embed_model: BgeIclEmbedding, **kwargs: Any) -> VectorStoreIndex:
    """CORPUS as nodes (ids from ``ids(table)``) embedded by ``embed_model`` into a fresh PGVectorStore."""
    store = open_store(postgres, table, embed_model.dimension, **kwargs)
    nodes = [TextNode(id_=i, text=text) for i, text in zip(ids(table), CORPUS, strict=True)]
    context = StorageContext.from_defaults(vector_store=store)
    return VectorStoreIndex(nodes, storage_context=context, embed_model=embed_model)


@pytest.fixture(scope="module")
def index(postgres: str, embed_model: BgeIclEmbedding) -> VectorStoreIndex:
    return build_index(postgres, "li_search", embed_model)


def search(index: VectorStoreIndex) -> Search:
    retriever = index.as_retriever(similarity_top_k=K)
    return lambda query: [(hit.node.get_content(), hit.score) for hit in retriever.retrieve(query)]


def test_retriever_ranks_like_brute_force(index: VectorStoreIndex, brute: BruteForce) -> None:
    brute.check(search(index))


async def test_async_retriever_ranks_like_brute_force(index: VectorStoreIndex, brute: BruteForce) -> None:
    hits = await index.as_retriever(similarity_top_k=K).aretrieve(QUERIES[1])
    assert [hit.node.get_content() for hit in hits] == brute.top_k(QUERIES[1])


def test_halfvec_column_ranks_like_brute_force(postgres: str, embed_model: BgeIclEmbedding, brute: BruteForce) -> None:
    """``use_halfvec=True`` stores 16-bit floats (pgvector indexes halfvec up to 4,000 dimensions, vector 2,000)."""
    index = build_index(postgres, "li_halfvec", embed_model, use_halfvec=True)
    brute.check(search(index), atol=2e-3)


def test_delete_then_reload(postgres: str, embed_model: BgeIclEmbedding, brute: BruteForce) -> None:
    """Deleted nodes leave the ranking; an index reopened from the table alone finds what was written."""
    index = build_index(postgres, "li_reload", embed_model)
    gone, kept = brute.deleted_and_kept()
    index.vector_store.delete_nodes(ids("li_reload", gone))
    store = open_store(postgres, "li_reload", embed_model.dimension)
    brute.check(search(VectorStoreIndex.from_vector_store(store, embed_model=embed_model.model_copy())), kept)


def test_bit_index_recipe_on_the_llamaindex_table(
    postgres: str, index: VectorStoreIndex, embed_model: BgeIclEmbedding, brute: BruteForce
) -> None:
    """The recipe on ``data_li_search`` (PGVectorStore's table): with every row a candidate, brute force's ranking."""
    sql = recipe_sql("data_li_search", "text", embed_model.dimension)
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(bit_index_sql("data_li_search", embed_model.dimension))
        for query in QUERIES:
            found = recipe_top_k(conn, sql, str(embed_model.get_query_embedding(query)), candidates=len(CORPUS))
            assert found == brute.top_k(query)


def test_hnsw_kwargs_at_4096_dimensions_leave_no_index(postgres: str, caplog: pytest.LogCaptureFixture) -> None:
    """``hnsw_kwargs`` asks pgvector for a float HNSW index, which it refuses above 2,000 dimensions; PGVectorStore
    only logs a warning and goes on without one (docs/vector-stores.md tells users not to pass it at 4,096)."""
    vectors = random_unit_vectors(3)
    store = open_store(postgres, "li_4096", 4096, hnsw_kwargs={"hnsw_m": 16, "hnsw_ef_construction": 64})
    with caplog.at_level(logging.WARNING):
        store.add([TextNode(text=f"row {i}", embedding=v.tolist()) for i, v in enumerate(vectors)])
    assert "column cannot have more than 2000 dimensions for hnsw index" in caplog.text
    with psycopg.connect(postgres) as conn:
        indexes = conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'data_li_4096'").fetchall()
    assert not any("hnsw" in row[0] for row in indexes)
    found = store.query(VectorStoreQuery(query_embedding=vectors[1].tolist(), similarity_top_k=1))
    assert [node.get_content() for node in found.nodes] == ["row 1"]  # exact search still works
