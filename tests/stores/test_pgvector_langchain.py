"""langchain-postgres' ``PGVector`` on a real PostgreSQL + pgvector with ``BgeIclEmbeddings``: add, search, delete,
reload; ranks and scores equal brute force over the core's vectors (queries on the query path, passages on the
passage path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("langchain_postgres")

from langchain_postgres import PGVector

from langchain_bge_icl import BgeIclEmbeddings
from tests.stores.conftest import CORPUS, QUERIES, BruteForce, K, ids, sqlalchemy_url


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


@pytest.fixture(scope="module")
def store(postgres: str, embeddings: BgeIclEmbeddings) -> PGVector:
    store = open_store(postgres, embeddings, "lc_search")
    store.add_texts(CORPUS, ids=ids("lc_search"))
    return store


@pytest.mark.parametrize("query", QUERIES)
def test_search_ranks_like_brute_force(store: PGVector, brute: BruteForce, query: str) -> None:
    hits = store.similarity_search_with_score(query, k=K)
    texts = [doc.page_content for doc, _ in hits]
    assert texts == brute.top_k(query)
    # pgvector's cosine distance is 1 - the brute-force cosine similarity, to float32 precision.
    np.testing.assert_allclose([1 - d for _, d in hits], brute.scores(query, texts), atol=1e-5)


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
    gone = brute.top_k(QUERIES[0], k=2)
    store.delete(ids=[ids("lc_reload")[CORPUS.index(text)] for text in gone])
    kept = [text for text in CORPUS if text not in gone]
    reloaded = open_store(postgres, embeddings.model_copy(), "lc_reload")
    for query in QUERIES:
        assert [doc.page_content for doc in reloaded.similarity_search(query, k=K)] == brute.top_k(query, kept)
    assert len(reloaded.get_by_ids(ids("lc_reload"))) == len(kept)
