"""Qdrant in local mode (embedded, persisted to disk) with both adapters: add, search, delete, reopen from disk;
ranks and scores equal brute force over the core's vectors. Local mode holds a lock on its directory, so a store is
closed before the directory is opened again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("qdrant_client")
pytest.importorskip("langchain_qdrant")
pytest.importorskip("llama_index.vector_stores.qdrant")

from langchain_qdrant import QdrantVectorStore as LangChainQdrant
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.schema import TextNode
from llama_index.vector_stores.qdrant import QdrantVectorStore as LlamaIndexQdrant
from qdrant_client import QdrantClient, models

from langchain_bge_icl import BgeIclEmbeddings
from llamaindex_bge_icl import BgeIclEmbedding
from tests.stores.conftest import CORPUS, BruteForce, K, Search, exact_top_k, ids, random_unit_vectors


def langchain_search(store: LangChainQdrant) -> Search:
    # Qdrant's cosine score is the similarity itself.
    return lambda query: [(d.page_content, score) for d, score in store.similarity_search_with_score(query, k=K)]


def test_langchain_round_trip(tmp_path: Path, tiny_dir: Path, options: dict[str, Any], brute: BruteForce) -> None:
    embeddings = BgeIclEmbeddings(model=str(tiny_dir), **options)
    store = LangChainQdrant.from_texts(CORPUS, embeddings, ids=ids("lc"), path=str(tmp_path), collection_name="lc")
    brute.check(langchain_search(store))
    gone, kept = brute.deleted_and_kept()
    store.delete(ids=ids("lc", gone))
    store.client.close()
    reopened = LangChainQdrant.from_existing_collection(
        embedding=embeddings.model_copy(), path=str(tmp_path), collection_name="lc"
    )
    brute.check(langchain_search(reopened), kept)
    reopened.client.close()


def llamaindex_search(store: LlamaIndexQdrant, embed_model: BgeIclEmbedding) -> Search:
    retriever = VectorStoreIndex.from_vector_store(store, embed_model=embed_model).as_retriever(similarity_top_k=K)
    return lambda query: [(hit.node.get_content(), hit.score) for hit in retriever.retrieve(query)]


# LlamaIndex asks for payload indexes, which local mode ignores (and says so).
@pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant")
def test_llamaindex_round_trip(tmp_path: Path, tiny_dir: Path, options: dict[str, Any], brute: BruteForce) -> None:
    embed_model = BgeIclEmbedding(model_name=str(tiny_dir), **options)
    client = QdrantClient(path=str(tmp_path))
    store = LlamaIndexQdrant(client=client, collection_name="li")
    nodes = [TextNode(id_=i, text=text) for i, text in zip(ids("li"), CORPUS, strict=True)]
    VectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=embed_model)
    brute.check(llamaindex_search(store, embed_model))
    gone, kept = brute.deleted_and_kept()
    store.delete_nodes(ids("li", gone))
    client.close()
    client = QdrantClient(path=str(tmp_path))
    reopened = LlamaIndexQdrant(client=client, collection_name="li")
    brute.check(llamaindex_search(reopened, embed_model.model_copy()), kept)
    client.close()


def test_4096_dimensions(tmp_path: Path) -> None:
    """A Qdrant collection of bge-en-icl's width (random 4,096-d vectors: only the width matters here)."""
    vectors = random_unit_vectors(200)
    client = QdrantClient(path=str(tmp_path))
    config = models.VectorParams(size=vectors.shape[1], distance=models.Distance.COSINE)
    client.create_collection("bge-4096", vectors_config=config)
    client.upsert("bge-4096", points=models.Batch(ids=list(range(len(vectors))), vectors=vectors.tolist()))
    for query in random_unit_vectors(3, seed=1):
        hits = client.query_points("bge-4096", query=query.tolist(), limit=K).points
        assert [hit.id for hit in hits] == exact_top_k(vectors, query)
    client.close()
