"""The cache helper: a real CacheBackedEmbeddings, query and passage vectors apart, reused, keyed by every setting."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_classic")

from langchain_classic.embeddings import CacheBackedEmbeddings
from langchain_classic.storage import LocalFileStore
from langchain_classic.storage.encoder_backed import EncoderBackedStore
from langchain_core.stores import InMemoryByteStore

from bge_icl import ICLEmbedder
from langchain_bge_icl import BgeIclEmbeddings, cache_backed_embeddings, cache_namespaces
from tests.conftest import NOTEBOOK_DOCUMENTS, NOTEBOOK_QUERIES

OTHER_EXAMPLES = [{"instruct": "Retrieve a definition.", "query": "apex", "response": "The highest point."}]
ROOT = Path(__file__).resolve().parents[2]


class Counting:
    """Counts the texts that reach the model through one ICLEmbedder instance."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, embedder: ICLEmbedder) -> None:
        self.queries: list[str] = []
        self.passages: list[str] = []
        prepare = embedder.prepare  # the first stage of every call, sync or async

        def counted(texts: Iterable[str], kind: str, *args: Any) -> Any:
            texts = list(texts)
            (self.queries if kind == "queries" else self.passages).extend(texts)
            return prepare(texts, kind, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(embedder, "prepare", counted)


@pytest.fixture
def fresh(core: ICLEmbedder) -> BgeIclEmbeddings:
    """An adapter with its own ICLEmbedder instance (same weights), safe to monkeypatch."""
    return BgeIclEmbeddings.from_embedder(core.with_options())


def keys(store: InMemoryByteStore) -> list[str]:
    return sorted(store.yield_keys())


def test_returns_a_real_cache_backed_embeddings(fresh: BgeIclEmbeddings) -> None:
    document_store, query_store = InMemoryByteStore(), InMemoryByteStore()
    cached = fresh.cached(document_store, query_store, batch_size=3)
    assert isinstance(cached, CacheBackedEmbeddings)
    assert cached.underlying_embeddings is fresh
    assert cached.batch_size == 3
    assert isinstance(cached.document_embedding_store, EncoderBackedStore)
    assert isinstance(cached.query_embedding_store, EncoderBackedStore)
    assert cached.document_embedding_store.store is document_store
    assert cached.query_embedding_store.store is query_store
    passage_namespace, query_namespace = cache_namespaces(fresh.embedder)
    text = "some text"
    assert cached.document_embedding_store.key_encoder(text).startswith(passage_namespace)
    assert cached.query_embedding_store.key_encoder(text).startswith(query_namespace)
    same = cache_backed_embeddings(fresh, document_store)
    assert isinstance(same, CacheBackedEmbeddings)
    assert same.query_embedding_store.store is document_store  # type: ignore[union-attr]


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
    passage_namespace, query_namespace = cache_namespaces(fresh.embedder)
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
    passage_keys = [k for k in keys(store) if k.startswith(passage_namespace)]
    query_keys = [k for k in keys(store) if k.startswith(query_namespace)]
    assert len(passage_keys) == len(query_keys) == 1
    assert len(keys(store)) == 2
    assert passage_keys != query_keys


def test_stock_query_embedding_cache_serves_the_passage_vector(
    fresh: BgeIclEmbeddings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bug the helper avoids: stock ``query_embedding_cache=True`` answers a query with the passage vector."""
    calls = Counting(monkeypatch, fresh.embedder)
    stock = CacheBackedEmbeddings.from_bytes_store(
        fresh, InMemoryByteStore(), namespace="bge-icl/", query_embedding_cache=True, key_encoder="sha256"
    )
    text = NOTEBOOK_QUERIES[0]
    document = stock.embed_documents([text])[0]
    served = stock.embed_query(text)
    assert calls.queries == []  # the model never saw the query: the document store answered
    assert served == document
    assert not np.allclose(served, fresh.embed_query(text))  # ... with the wrong vector

    ours = fresh.cached(InMemoryByteStore())
    assert ours.embed_documents([text])[0] == document
    assert ours.embed_query(text) == fresh.embed_query(text)


def test_separate_query_store(fresh: BgeIclEmbeddings) -> None:
    document_store, query_store = InMemoryByteStore(), InMemoryByteStore()
    cached = fresh.cached(document_store, query_store)
    passage_namespace, query_namespace = cache_namespaces(fresh.embedder)
    cached.embed_documents(NOTEBOOK_DOCUMENTS)
    cached.embed_query(NOTEBOOK_QUERIES[0])
    assert all(k.startswith(passage_namespace) for k in keys(document_store))
    assert [k.startswith(query_namespace) for k in keys(query_store)] == [True]
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
    assert cache_namespaces(other.embedder)[1] != cache_namespaces(fresh.embedder)[1]
    assert cache_namespaces(other.embedder)[0] == cache_namespaces(fresh.embedder)[0]
    other_query = other_cached.embed_query(NOTEBOOK_QUERIES[1])
    assert calls.queries == [NOTEBOOK_QUERIES[1]]  # a miss: never the vector made with the old examples
    assert other_query != notebook_query
    assert other_query == other.embed_query(NOTEBOOK_QUERIES[1])
    assert other_cached.embed_documents(NOTEBOOK_DOCUMENTS) == cached.embed_documents(NOTEBOOK_DOCUMENTS)
    assert calls.passages == []  # passages do not depend on the examples: still cached
    assert len(keys(store)) == 4  # two passages, one query per example set


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
    changed_passage, changed_query = cache_namespaces(core.with_options(**change))
    assert (changed_query != query) is query_changes
    assert (changed_passage != passage) is passage_changes


def test_keys_suit_file_stores(fresh: BgeIclEmbeddings) -> None:
    store = InMemoryByteStore()
    cached = fresh.cached(store)
    cached.embed_documents(["naïve café ☕", "a/b\\c:d"])
    cached.embed_query("what? 🤔")
    assert len(keys(store)) == 3
    assert all(re.fullmatch(r"[a-z0-9/-]+", k) for k in keys(store))


def test_local_file_store_persists_across_instances(
    fresh: BgeIclEmbeddings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = ["naïve café ☕", "a/b\\c:d"]
    first = fresh.cached(LocalFileStore(tmp_path))
    documents = first.embed_documents(texts)
    query = first.embed_query("what? 🤔")
    assert len(list(LocalFileStore(tmp_path).yield_keys())) == 3

    calls = Counting(monkeypatch, fresh.embedder)
    again = fresh.cached(LocalFileStore(tmp_path))  # a new process would see the same files
    assert again.embed_documents(texts) == documents
    assert again.embed_query("what? 🤔") == query
    assert (calls.passages, calls.queries) == ([], [])


def test_batch_size_writes_as_it_goes(fresh: BgeIclEmbeddings, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Counting(monkeypatch, fresh.embedder)
    store = InMemoryByteStore()
    texts = [f"passage {i}" for i in range(5)]
    writes: list[int] = []
    mset = store.mset
    monkeypatch.setattr(store, "mset", lambda pairs: (writes.append(len(pairs)), mset(pairs))[1])
    vectors = fresh.cached(store, batch_size=2).embed_documents(texts)
    assert calls.passages == texts
    assert writes == [2, 2, 1]
    assert len(keys(store)) == 5
    np.testing.assert_allclose(vectors, fresh.embed_documents(texts), atol=1e-5)  # other batches, other padding
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match=re.escape(f"batch_size must be a positive int or None, got {bad!r}")):
            cache_backed_embeddings(fresh, store, batch_size=bad)  # type: ignore[arg-type]


async def test_async_methods_share_the_cache(fresh: BgeIclEmbeddings, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Counting(monkeypatch, fresh.embedder)
    cached = fresh.cached(InMemoryByteStore())
    documents = await cached.aembed_documents([*NOTEBOOK_DOCUMENTS, NOTEBOOK_DOCUMENTS[0]])
    query = await cached.aembed_query(NOTEBOOK_QUERIES[0])
    assert cached.embed_documents(NOTEBOOK_DOCUMENTS) == documents[:2]
    assert documents[2] == documents[0]
    assert cached.embed_query(NOTEBOOK_QUERIES[0]) == query
    assert await cached.aembed_documents(NOTEBOOK_DOCUMENTS) == documents[:2]
    assert await cached.aembed_query(NOTEBOOK_QUERIES[0]) == query
    assert (calls.passages, calls.queries) == (NOTEBOOK_DOCUMENTS, [NOTEBOOK_QUERIES[0]])


def test_missing_langchain_classic_names_the_extra(fresh: BgeIclEmbeddings, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name == "langchain_classic" or name.startswith("langchain_classic."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "langchain_classic", None)
    with pytest.raises(ImportError, match=re.escape("pip install 'bge-icl[langchain-cache]'")):
        fresh.cached(InMemoryByteStore())
    with pytest.raises(ImportError, match=re.escape("pip install 'bge-icl[langchain-cache]'")):
        cache_backed_embeddings(fresh, InMemoryByteStore())


def test_the_adapter_imports_without_langchain_classic() -> None:
    code = (
        "import sys\n"
        "sys.modules['langchain_classic'] = None\n"
        "import langchain_bge_icl\n"
        "assert 'langchain_classic.embeddings' not in sys.modules\n"
        "print(sorted(langchain_bge_icl.__all__))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "cache_backed_embeddings" in result.stdout
