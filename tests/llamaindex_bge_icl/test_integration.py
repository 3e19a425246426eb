"""BgeIclEmbedding inside LlamaIndex: Settings, VectorStoreIndex, retrievers, query engines, ingestion."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.llms import MockLLM
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, TextNode
from llama_index.core.storage.kvstore import SimpleKVStore

from bge_icl import ICLEmbedder, TruncationWarning
from llamaindex_bge_icl import BgeIclEmbedding
from tests.conftest import NOTEBOOK_DOCUMENTS, NOTEBOOK_QUERIES
from tests.llamaindex_bge_icl.conftest import CORPUS

TOP_K = 3


def brute_force(core: ICLEmbedder, query: str, nodes: list[BaseNode], k: int) -> list[tuple[str, float]]:
    """Top-k (node text, cosine) over the core's vectors of each node's embed-mode text."""
    texts = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
    passages, q = core.encode_corpus(texts), core.encode_queries([query])[0]
    scores = passages @ q / (np.linalg.norm(passages, axis=1) * np.linalg.norm(q))
    return [(texts[i], float(scores[i])) for i in np.argsort(-scores)[:k]]


def assert_ranked_like(hits: list[NodeWithScore], expected: list[tuple[str, float]]) -> None:
    assert [h.node.get_content(metadata_mode=MetadataMode.EMBED) for h in hits] == [t for t, _ in expected]
    np.testing.assert_allclose(np.array([h.score for h in hits]), np.array([s for _, s in expected]), atol=1e-5)


@pytest.fixture
def settings_embed_model(emb: BgeIclEmbedding) -> Iterator[BgeIclEmbedding]:
    saved = Settings._embed_model
    Settings.embed_model = emb
    yield emb
    Settings._embed_model = saved


def test_settings_index_retriever_rank_like_brute_force(
    settings_embed_model: BgeIclEmbedding, core: ICLEmbedder
) -> None:
    assert Settings.embed_model is settings_embed_model
    index = VectorStoreIndex.from_documents([Document(text=t) for t in CORPUS])  # no embed_model: Settings'
    nodes = list(index.docstore.docs.values())
    assert len(nodes) == len(CORPUS)
    retriever = index.as_retriever(similarity_top_k=TOP_K)
    for query in NOTEBOOK_QUERIES:
        assert_ranked_like(retriever.retrieve(query), brute_force(core, query, nodes, TOP_K))


async def test_index_with_metadata_and_query_engine(emb: BgeIclEmbedding, core: ICLEmbedder) -> None:
    docs = [Document(text=t, metadata={"source": f"doc-{i}"}) for i, t in enumerate(CORPUS)]
    index = VectorStoreIndex.from_documents(docs, embed_model=emb)
    nodes = list(index.docstore.docs.values())
    assert all("source: doc-" in n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes)
    query = NOTEBOOK_QUERIES[0]
    expected = brute_force(core, query, nodes, TOP_K)
    assert_ranked_like(index.as_retriever(similarity_top_k=TOP_K).retrieve(query), expected)
    assert_ranked_like(await index.as_retriever(similarity_top_k=TOP_K).aretrieve(query), expected)

    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=TOP_K)
    response = engine.query(query)
    assert isinstance(str(response), str)
    assert_ranked_like(response.source_nodes, expected)


def test_ingestion_pipeline_embeds_nodes_in_embed_mode(emb: BgeIclEmbedding, core: ICLEmbedder) -> None:
    docs = [
        Document(
            text=" ".join([t] * 3),
            metadata={"title": f"notebook {i}", "secret": "x"},
            excluded_embed_metadata_keys=["secret"],
        )
        for i, t in enumerate(NOTEBOOK_DOCUMENTS)
    ]
    pipeline = IngestionPipeline(transformations=[SentenceSplitter(chunk_size=64, chunk_overlap=0), emb])
    nodes = pipeline.run(documents=docs)
    assert len(nodes) > len(docs)
    texts = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
    assert all(t.startswith("title: notebook") and "secret" not in t for t in texts)
    np.testing.assert_allclose(np.array([n.embedding for n in nodes]), core.encode_corpus(texts), atol=1e-5)


async def test_ingestion_pipeline_async(emb: BgeIclEmbedding, core: ICLEmbedder) -> None:
    pipeline = IngestionPipeline(transformations=[SentenceSplitter(chunk_size=64, chunk_overlap=0), emb])
    nodes = await pipeline.arun(documents=[Document(text=t) for t in NOTEBOOK_DOCUMENTS])
    texts = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
    np.testing.assert_allclose(np.array([n.embedding for n in nodes]), core.encode_corpus(texts), atol=1e-5)


def _documented_embed_batch_size() -> int:
    page = (Path(__file__).resolve().parents[2] / "docs" / "llamaindex.md").read_text(encoding="utf-8")
    found = re.search(r"^\| `embed_batch_size` \| (\d+) \|", page, re.MULTILINE)
    assert found, "docs/llamaindex.md states no embed_batch_size default"
    return int(found.group(1))


def test_an_index_of_1000_nodes_reaches_the_core_in_one_call_tokenized_once(
    fields: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    documented = _documented_embed_batch_size()
    assert BgeIclEmbedding.model_fields["embed_batch_size"].default == documented  # the docs state the code's default
    emb = BgeIclEmbedding(**{**fields, "on_truncation": "warn", "passage_max_length": 16})
    calls: list[int] = []  # texts tokenized per call
    real = emb.embedder.prepare
    monkeypatch.setattr(emb.embedder, "prepare",
                        lambda texts, kind, *a: (calls.append(len(texts)), real(texts, kind, *a))[1])  # fmt: skip
    texts = [f"passage {i}: " + ("a long one, " * 20 if i % 250 == 7 else "short") for i in range(1000)]
    nodes = [TextNode(text=t, id_=str(i)) for i, t in enumerate(texts)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        VectorStoreIndex(nodes, embed_model=emb)
    assert calls == [1000]  # the core's token budget, not embed_batch_size, sizes the passes
    reports = [w.message for w in caught if isinstance(w.message, TruncationWarning)]
    assert [(r.count, r.total) for r in reports] == [(4, 1000)]  # one report for the whole call


def test_embeddings_cache_still_answers_a_1000_node_index(fields: dict[str, Any],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    store = SimpleKVStore()
    emb = BgeIclEmbedding(**fields, embeddings_cache=store)
    nodes = [TextNode(text=f"passage {i} about mountains", id_=str(i)) for i in range(1000)]
    first = VectorStoreIndex(nodes, embed_model=emb)
    calls: list[int] = []
    real = emb.embedder.encode_corpus
    monkeypatch.setattr(emb.embedder, "encode_corpus",
                        lambda texts, **kw: (calls.append(len(texts)), real(texts, **kw))[1])  # fmt: skip
    again = VectorStoreIndex(nodes, embed_model=emb)
    assert calls == []  # every vector came from the cache
    assert len(store.get_all("embeddings")) == 1000
    assert again.vector_store.get("7") == first.vector_store.get("7")
