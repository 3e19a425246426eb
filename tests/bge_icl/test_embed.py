"""``embed`` / ``aembed``: vectors with their token counts (a server's ``usage``), and the pass counters."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bge_icl import ICLEmbedder, TruncationError
from tests.conftest import NOTEBOOK_DOCUMENTS, NOTEBOOK_QUERIES


@pytest.mark.parametrize("kind", ["queries", "passages"])
def test_embed_equals_encode_and_counts_the_tokens_the_model_saw(emb: ICLEmbedder, kind: str) -> None:
    texts = NOTEBOOK_QUERIES if kind == "queries" else NOTEBOOK_DOCUMENTS
    out = emb.embed(texts, kind)  # type: ignore[arg-type]
    encode = emb.encode_queries if kind == "queries" else emb.encode_corpus
    np.testing.assert_array_equal(out.vectors, encode(texts))
    tokenize = emb.tokenize_queries if kind == "queries" else emb.tokenize_corpus
    assert out.tokens == tuple(len(ids) for ids in tokenize(texts).ids) and out.truncated == ()
    if kind == "queries":
        assert min(out.tokens) > len(emb.prefix_ids or ())  # the few-shot prefix counts


def test_aembed_runs_off_the_event_loop_and_reports_truncation_by_index(emb: ICLEmbedder) -> None:
    short = emb.with_options(passage_max_length=8)
    texts = ["a", "word " * 20, "b"]
    out = asyncio.run(short.aembed(texts, "passages", on_truncation="ignore"))
    assert out.truncated == (1,) and out.tokens[1] == 8
    with pytest.raises(TruncationError) as info:
        asyncio.run(short.aembed(texts, "passages", on_truncation="error"))
    assert info.value.indices == (1,)


def test_stats_count_forward_passes_and_nothing_stays_queued(emb: ICLEmbedder) -> None:
    fresh = emb.with_options(batch_size=2)
    before = fresh.stats
    fresh.encode_corpus(["one", "two", "three", "four", "five"])
    after = fresh.stats
    assert after.forward_passes - before.forward_passes == 3
    assert sum(after.replica_rows) - sum(before.replica_rows) == 5 and after.queued_rows == 0
