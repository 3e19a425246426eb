"""The cache helper: query and passage vectors stored apart, reused, and keyed by every setting."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest

pytest.importorskip("langchain_core")

from langchain_core.stores import InMemoryByteStore

from bge_icl import ICLEmbedder
from langchain_bge_icl import BgeIclEmbeddings, CachedBgeIclEmbeddings, cache_namespaces
from tests.conftest import NOTEBOOK_DOCUMENTS, NOTEBOOK_QUERIES

OTHER_EXAMPLES = [{"instruct": "Retrieve a definition.", "query": "apex", "response": "The highest point."}]


class Counting:
    """Counts the texts that reach the model through one ICLEmbedder instance."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, embedder: ICLEmbedder) -> None:
        self.queries: list[str] = []
        self.passages: list[str] = []
        for name, seen in (("encode_queries", self.queries), ("encode_corpus", self.passages)):
            monkeypatch.setattr(embedder, name, self._wrap(getattr(embedder, name), seen))

    @staticmethod
    def _wrap(encode: Any, seen: list[str]) -> Any:
        def counted(texts: Iterable[str], **kwargs: Any) -> Any:
            texts = list(texts)
            seen.extend(texts)
            return encode(texts, **kwargs)

        return counted


@pytest.fixture
def fresh(core: ICLEmbedder) -> BgeIclEmbeddings:
    """An adapter with its own ICLEmbedder instance (same weights), safe to monkeypatch."""
    return BgeIclEmbeddings.from_embedder(core.with_examples(core.options["examples_for_task"]))


def keys(store: InMemoryByteStore) -> list[str]:
    return sorted(store.yield_keys())


def test_documents_are_embedded_once_and_reused(
    fresh: BgeIclEmbeddings, embeddings: BgeIclEmbeddings, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Counting(monkeypatch, fresh.embedder)
    store = InMemoryByteStore()
    cached = fresh.cached(store)
    texts = [NOTEBOOK_DOCUMENTS[0], NOTEBOOK_DOCUMENTS[1], NOTEBOOK_DOCUMENTS[0]]
    first = cached.embed_documents(texts)
    assert calls.passages == NOTEBOOK_DOCUMENTS  # each distinct text once
    assert len(keys(store)) == 2
    second = cached.embed_documents(texts)
    assert calls.passages == NOTEBOOK_DOCUMENTS  # no new model call
    expected = embeddings.embed_documents(texts)
    assert first == second == expected  # float32 values round-trip exactly


def test_query_and_document_vectors_of_one_text_never_collide(
    fresh: BgeIclEmbeddings, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Counting(monkeypatch, fresh.embedder)
    store = InMemoryByteStore()
    cached = fresh.cached(store)  # one store for both kinds: stock query_embedding_cache=True would collide
    text = NOTEBOOK_QUERIES[0]
    document = cached.embed_documents([text])[0]
    query = cached.embed_query(text)
    assert calls.queries == [text]
    assert query == fresh.embed_query(text)
    assert not np.allclose(query, document)
    assert cached.embed_query(text) == query
    assert cached.embed_documents([text])[0] == document
    assert calls.queries == [text, text]  # the direct fresh.embed_query above; the cache answered the rest
    assert calls.passages == [text]
    passage_keys = [k for k in keys(store) if k.startswith(cached.document_namespace)]
    query_keys = [k for k in keys(store) if k.startswith(cached.query_namespace)]
    assert len(passage_keys) == len(query_keys) == 1
    assert passage_keys != query_keys


def test_separate_query_store(fresh: BgeIclEmbeddings) -> None:
    document_store, query_store = InMemoryByteStore(), InMemoryByteStore()
    cached = fresh.cached(document_store, query_store)
    cached.embed_documents(NOTEBOOK_DOCUMENTS)
    cached.embed_query(NOTEBOOK_QUERIES[0])
    assert all(k.startswith(cached.document_namespace) for k in keys(document_store))
    assert [k.startswith(cached.query_namespace) for k in keys(query_store)] == [True]
    assert len(keys(document_store)) == 2


def test_changed_examples_miss_the_query_cache_but_keep_passages(
    fresh: BgeIclEmbeddings, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = InMemoryByteStore()
    cached = fresh.cached(store)
    cached.embed_documents(NOTEBOOK_DOCUMENTS)
    notebook_query = cached.embed_query(NOTEBOOK_QUERIES[1])

    other = fresh.with_examples(OTHER_EXAMPLES)
    calls = Counting(monkeypatch, other.embedder)
    other_cached = other.cached(store)
    assert other_cached.query_namespace != cached.query_namespace
    other_query = other_cached.embed_query(NOTEBOOK_QUERIES[1])
    assert calls.queries == [NOTEBOOK_QUERIES[1]]  # a miss: never the vector made with the old examples
    assert other_query != notebook_query
    assert other_query == other.embed_query(NOTEBOOK_QUERIES[1])
    assert other_cached.embed_documents(NOTEBOOK_DOCUMENTS) == cached.embed_documents(NOTEBOOK_DOCUMENTS)
    assert calls.passages == []  # passages do not depend on the examples: still cached


@pytest.mark.parametrize(
    ("change", "query_changes", "passage_changes"),
    [
        ({"query_instruction_for_retrieval": "Retrieve a definition."}, True, False),
        ({"query_max_length": 256}, True, False),
        ({"suffix": "\n<response> "}, True, False),
        ({"passage_max_length": 256}, False, True),
        ({"normalize_embeddings": False}, True, True),
    ],
)
def test_namespaces_encode_the_settings(
    core: ICLEmbedder, change: dict[str, Any], query_changes: bool, passage_changes: bool
) -> None:
    passage, query = cache_namespaces(core)
    changed_passage, changed_query = cache_namespaces(ICLEmbedder(**{**core.options, **change}))
    assert (changed_query != query) is query_changes
    assert (changed_passage != passage) is passage_changes


def test_keys_suit_file_stores(fresh: BgeIclEmbeddings) -> None:
    store = InMemoryByteStore()
    cached = fresh.cached(store)
    cached.embed_documents(["naïve café ☕", "a/b\\c:d"])
    cached.embed_query("what? 🤔")
    assert all(re.fullmatch(r"[a-z0-9/-]+", k) for k in keys(store))


def test_batch_size_writes_as_it_goes(fresh: BgeIclEmbeddings, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Counting(monkeypatch, fresh.embedder)
    store = InMemoryByteStore()
    texts = [f"passage {i}" for i in range(5)]
    vectors = fresh.cached(store, batch_size=2).embed_documents(texts)
    assert calls.passages == texts
    assert len(keys(store)) == 5
    np.testing.assert_allclose(vectors, fresh.embed_documents(texts), atol=1e-5)  # other batches, other padding
    with pytest.raises(ValueError, match="batch_size must be a positive int or None, got 0"):
        CachedBgeIclEmbeddings(fresh, store, batch_size=0)


async def test_async_methods_share_the_cache(fresh: BgeIclEmbeddings, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Counting(monkeypatch, fresh.embedder)
    cached = fresh.cached(InMemoryByteStore())
    documents = await cached.aembed_documents(NOTEBOOK_DOCUMENTS)
    query = await cached.aembed_query(NOTEBOOK_QUERIES[0])
    assert cached.embed_documents(NOTEBOOK_DOCUMENTS) == documents
    assert cached.embed_query(NOTEBOOK_QUERIES[0]) == query
    assert await cached.aembed_documents(NOTEBOOK_DOCUMENTS) == documents
    assert await cached.aembed_query(NOTEBOOK_QUERIES[0]) == query
    assert (calls.passages, calls.queries) == (NOTEBOOK_DOCUMENTS, [NOTEBOOK_QUERIES[0]])
