"""Chroma, embedded and persisted to disk, with both adapters: add, search, delete, reopen from disk; ranks and
scores equal brute force over the core's vectors. Chroma is always given our embeddings, so its default ONNX
model (a download) is never used: the ``no_default_embedding`` fixture makes any use of it fail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("chromadb")
pytest.importorskip("langchain_chroma")
pytest.importorskip("llama_index.vector_stores.chroma")

import chromadb
from chromadb.api.shared_system_client import SharedSystemClient
from chromadb.utils.embedding_functions import ONNXMiniLM_L6_V2
from langchain_chroma import Chroma
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.schema import TextNode
from llama_index.vector_stores.chroma import ChromaVectorStore

from langchain_bge_icl import BgeIclEmbeddings
from llamaindex_bge_icl import BgeIclEmbedding
from tests.stores.conftest import CORPUS, BruteForce, K, Search, exact_top_k, ids, random_unit_vectors

COSINE = {"hnsw:space": "cosine"}


@pytest.fixture(autouse=True)
def no_default_embedding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any, **__: Any) -> None:
        msg = "Chroma's default embedding function was called: pass our embeddings"
        raise AssertionError(msg)

    monkeypatch.setattr(ONNXMiniLM_L6_V2, "__call__", refuse)


def reopen() -> None:
    """Forget the in-process clients, so the next client reads the directory from disk."""
    SharedSystemClient.clear_system_cache()


def langchain_store(path: Path, embeddings: BgeIclEmbeddings) -> Chroma:
    return Chroma("bge-lc", embedding_function=embeddings, persist_directory=str(path), collection_metadata=COSINE)


def langchain_search(store: Chroma) -> Search:
    return lambda query: [(d.page_content, 1 - dist) for d, dist in store.similarity_search_with_score(query, k=K)]


def test_langchain_round_trip(tmp_path: Path, tiny_dir: Path, options: dict[str, Any], brute: BruteForce) -> None:
    embeddings = BgeIclEmbeddings(model=str(tiny_dir), **options)
    store = langchain_store(tmp_path, embeddings)
    store.add_texts(CORPUS, ids=ids("lc"))
    brute.check(langchain_search(store))
    gone, kept = brute.deleted_and_kept()
    store.delete(ids=ids("lc", gone))
    reopen()
    brute.check(langchain_search(langchain_store(tmp_path, embeddings.model_copy())), kept)


def llamaindex_store(path: Path) -> ChromaVectorStore:
    client = chromadb.PersistentClient(path=str(path))
    return ChromaVectorStore(chroma_collection=client.get_or_create_collection("bge-li", metadata=COSINE))


def llamaindex_search(store: ChromaVectorStore, embed_model: BgeIclEmbedding) -> Search:
    retriever = VectorStoreIndex.from_vector_store(store, embed_model=embed_model).as_retriever(similarity_top_k=K)
    # ChromaVectorStore scores exp(-distance); the cosine similarity is 1 - distance.
    return lambda query: [(h.node.get_content(), 1 + np.log(h.score)) for h in retriever.retrieve(query)]


def test_llamaindex_round_trip(tmp_path: Path, tiny_dir: Path, options: dict[str, Any], brute: BruteForce) -> None:
    embed_model = BgeIclEmbedding(model_name=str(tiny_dir), **options)
    store = llamaindex_store(tmp_path)
    nodes = [TextNode(id_=i, text=text) for i, text in zip(ids("li"), CORPUS, strict=True)]
    VectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed_model)
    brute.check(llamaindex_search(store, embed_model))
    gone, kept = brute.deleted_and_kept()
    store.delete_nodes(ids("li", gone))
    reopen()
    brute.check(llamaindex_search(llamaindex_store(tmp_path), embed_model.model_copy()), kept)


def test_4096_dimensions(tmp_path: Path) -> None:
    """Chroma's HNSW index takes bge-en-icl's width: 4,096-d vectors (random: only the width matters here)."""
    vectors = random_unit_vectors(200)
    collection = chromadb.PersistentClient(path=str(tmp_path)).create_collection("bge-4096", metadata=COSINE)
    collection.add(ids=[str(i) for i in range(len(vectors))], embeddings=vectors)
    for query in random_unit_vectors(3, seed=1):
        found = collection.query(query_embeddings=[query], n_results=K)["ids"][0]
        assert [int(i) for i in found] == exact_top_k(vectors, query)
