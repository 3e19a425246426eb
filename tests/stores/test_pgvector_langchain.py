"""langchain-postgres' ``PGVector`` with ``BgeIclEmbeddings``, as ``test_pgvector_llamaindex`` does LlamaIndex's
store: add, search, delete and reload rank like brute force (:class:`tests.stores.conftest.BruteForce`), and
docs/vector-stores.md's recipe (:mod:`tests.stores.recipe`) runs on PGVector's own table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain_postgres")

import psycopg
from langchain_postgres import PGVector

from langchain_bge_icl import BgeIclEmbeddings
from tests.stores.conftest import CORPUS, QUERIES, BruteForce, K, Search, ids
from tests.stores.recipe import bit_index_sql, recipe_sql, recipe_top_k, sqlalchemy_url


@pytest.fixture(scope="module")
def embeddings(tiny_dir: Path, options: dict[str, Any]) -> BgeIclEmbeddings:
    return BgeIclEmbeddings(model=str(tiny_dir), **options)


def open_store(postgres: str, embeddings: BgeIclEmbeddings, collection: str, **kwargs: Any) -> PGVector:
    """A PGVector store on ``collection`` (created if missing), ``vector(dimension)`` column, cosine distance."""
    return PGVector(
        embeddings=embeddings,
        collection_name=collection,
        connection=sqlalchemy_url(postgres),
        embedding_length=embeddings.dimension,
        **kwargs,
    )


def search(store: PGVector) -> Search:
    # pgvector's cosine distance is 1 - the cosine similarity.
    return lambda query: [(d.page_content, 1 - dist) for d, dist in store.similarity_search_with_score(query, k=K)]


@pytest.fixture(scope="module")
def store(postgres: str, embeddings: BgeIclEmbeddings) -> PGVector:
    store = open_store(postgres, embeddings, "lc_search")
    store.add_texts(CORPUS, ids=ids("lc_search"))
    return store


def test_search_ranks_like_brute_force(store: PGVector, brute: BruteForce) -> None:
    brute.check(search(store))


def test_retriever_ranks_like_brute_force(store: PGVector, brute: BruteForce) -> None:
    docs = store.as_retriever(search_kwargs={"k": K}).invoke(QUERIES[0])
    assert [doc.page_content for doc in docs] == brute.top_k(QUERIES[0])


async def test_async_search_ranks_like_brute_force(
    postgres: str, embeddings: BgeIclEmbeddings, brute: BruteForce
) -> None:
    store = open_store(postgres, embeddings, "lc_async", async_mode=True)
    await store.aadd_texts(CORPUS, ids=ids("lc_async"))
    docs = await store.asimilarity_search(QUERIES[1], k=K)
    assert [doc.page_content for doc in docs] == brute.top_k(QUERIES[1])


def test_delete_then_reload(postgres: str, embeddings: BgeIclEmbeddings, brute: BruteForce) -> None:
    """Deleted ids leave the ranking; a new store object on the same collection finds what was written."""
    store = open_store(postgres, embeddings, "lc_reload")
    store.add_texts(CORPUS, ids=ids("lc_reload"))
    gone, kept = brute.deleted_and_kept()
    store.delete(ids=ids("lc_reload", gone))
    reloaded = open_store(postgres, embeddings.model_copy(), "lc_reload")
    brute.check(search(reloaded), kept)
    assert len(reloaded.get_by_ids(ids("lc_reload"))) == len(kept)


def test_bit_index_recipe_on_the_langchain_table(
    postgres: str, store: PGVector, embeddings: BgeIclEmbeddings, brute: BruteForce
) -> None:
    """An HNSW index on ``binary_quantize(embedding)`` of PGVector's table, then the exact re-rank of its candidates:
    with every row a candidate, the recipe's ranking is brute force's."""
    collection = "collection_id = (SELECT uuid FROM langchain_pg_collection WHERE name = 'lc_search')"
    sql = recipe_sql("langchain_pg_embedding", "document", embeddings.dimension, where=collection)
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(bit_index_sql("langchain_pg_embedding", embeddings.dimension))
        for query in QUERIES:
            found = recipe_top_k(conn, sql, str(embeddings.embed_query(query)), candidates=len(CORPUS))
            assert found == brute.top_k(query)
