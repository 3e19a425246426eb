"""``embed`` / ``aembed``: vectors with their token counts (a server's ``usage``), and the pass counters."""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest

from bge_icl import ICLEmbedder, TruncationError
from bge_icl.errors import OptionValueError
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


@pytest.mark.parametrize("kind", ["queries", "passages"])
def test_aembed_dimensions_is_the_heads_cut_as_truncate_dim(emb: ICLEmbedder, kind: str) -> None:
    texts = NOTEBOOK_QUERIES if kind == "queries" else NOTEBOOK_DOCUMENTS
    cut = emb.with_options(truncate_dim=16)  # the core's own truncate_dim, on the same weights
    expected = cut.encode_queries(texts) if kind == "queries" else cut.encode_corpus(texts)
    got = asyncio.run(emb.aembed(texts, kind, dimensions=16)).vectors  # type: ignore[arg-type]
    assert got.shape == (len(texts), 16)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert asyncio.run(emb.aembed(texts, kind)).vectors.shape == (len(texts), emb.dimension)  # type: ignore[arg-type]


@pytest.mark.parametrize("dimensions", [0, 10_000])
def test_aembed_dimensions_out_of_range_names_the_valid_ones(emb: ICLEmbedder, dimensions: int) -> None:
    message = f"dimensions={dimensions} is out of range; valid: 1 to {emb.dimension}"
    if dimensions == 0:
        message = "dimensions must be a positive int, got 0"
    with pytest.raises(OptionValueError, match=re.escape(message)) as info:
        asyncio.run(emb.aembed(["a"], "passages", dimensions=dimensions))
    assert (info.value.option, info.value.value) == ("dimensions", dimensions)


def test_stats_count_forward_passes_and_nothing_stays_queued(emb: ICLEmbedder) -> None:
    fresh = emb.with_options(batch_size=2)
    before = fresh.stats
    fresh.encode_corpus(["one", "two", "three", "four", "five"])
    after = fresh.stats
    assert after.forward_passes - before.forward_passes == 3
    assert sum(after.replica_rows) - sum(before.replica_rows) == 5 and after.queued_rows == 0
