"""Async: concurrent calls agree with sequential ones, and embedding does not block the event loop."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("langchain_core")

from langchain_bge_icl import BgeIclEmbeddings
from tests.conftest import NOTEBOOK_DOCUMENTS
from tests.reliability_helpers import assert_same_vectors, passes_after_cancelling

QUERIES = [f"question number {i}: how much protein should a female eat" for i in range(8)]


async def test_concurrent_queries_match_sequential(embeddings: BgeIclEmbeddings) -> None:
    sequential = [embeddings.embed_query(q) for q in QUERIES]
    concurrent = await asyncio.gather(*(embeddings.aembed_query(q) for q in QUERIES))
    assert_same_vectors(list(concurrent), sequential)  # concurrent calls share passes: within 1e-6


async def test_concurrent_calls_on_shared_weights_match_sequential(embeddings: BgeIclEmbeddings) -> None:
    zero_shot = embeddings.with_examples(None)
    sequential = [embeddings.embed_documents(NOTEBOOK_DOCUMENTS), zero_shot.embed_query(QUERIES[0])]
    sequential += [embeddings.embed_query(q) for q in QUERIES[:3]]
    concurrent = await asyncio.gather(
        embeddings.aembed_documents(NOTEBOOK_DOCUMENTS),
        zero_shot.aembed_query(QUERIES[0]),
        *(embeddings.aembed_query(q) for q in QUERIES[:3]),
    )
    assert_same_vectors(list(concurrent), sequential)  # concurrent calls share passes: within 1e-6


async def test_long_embedding_call_does_not_block_the_event_loop(tiny_path: str) -> None:
    embeddings = BgeIclEmbeddings(model=tiny_path, devices="cpu", show_progress=False)
    passages = [f"passage {i} about protein, summits and back pain " * 8 for i in range(240)]
    ticks = 0
    task = asyncio.create_task(embeddings.aembed_documents(passages))
    while not task.done():
        await asyncio.sleep(0.001)
        ticks += 1
    vectors = await task
    assert len(vectors) == len(passages)
    assert ticks > 5, f"the event loop ticked only {ticks} times while embedding {len(passages)} passages"


async def test_a_cancelled_aembed_documents_stops_after_the_running_pass(embeddings: BgeIclEmbeddings) -> None:
    small = embeddings.with_options(batch_size=1)  # one passage a pass
    passages = [f"passage {i}" for i in range(50)]
    passes = await passes_after_cancelling(small.embedder, lambda: small.aembed_documents(passages))
    assert passes <= 2 and small.embedder.stats.queued_rows == 0  # the running pass, at most one more
    assert_same_vectors(await small.aembed_documents(["still usable"]), embeddings.embed_documents(["still usable"]))
