"""BgeIclEmbedding on bad input, under concurrency, and after a failed forward pass (issue 6)."""

from __future__ import annotations

import asyncio
import gc
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.storage.kvstore import SimpleKVStore

from bge_icl import TruncationError, TruncationWarning
from llamaindex_bge_icl import QUERY_CACHE_COLLECTION, BgeIclEmbedding
from tests.bge_icl.cases import LONG_PASSAGE, LONG_QUERY
from tests.conftest import NOTEBOOK_DOCUMENTS, NOTEBOOK_EXAMPLES, NOTEBOOK_QUERIES
from tests.reliability_helpers import (
    ODD_TEXTS,
    TIMEOUT,
    FailOnce,
    assert_same_vectors,
    assert_unit,
    cancel_mid_pass,
    lock_is_free,
)

BAD_LISTS = [
    (["a", "b", "c", "d", "e", None], "item 5 is NoneType, expected str"),  # in the third chunk of 2
    (["a", 7], "item 1 is int, expected str"),
    (["a", 1.5], "item 1 is float, expected str"),
    (["a", "b", "c", b"bytes"], "item 3 is bytes, expected str"),
    (["a", "b", "c", ["nested"]], "item 3 is list, expected str"),
    ("one string", "texts must be a list of str, got str; wrap one text in a list"),
    (b"bytes", "texts must be a list of str, got bytes"),
    ({"a": "b"}, "texts must be a list of str, got dict"),
    (None, "texts must be a list of str, got NoneType"),
]
BAD_SINGLES = [(None, "NoneType"), (3, "int"), (b"t", "bytes"), (["t"], "list")]


@pytest.fixture
def chunked(fields: dict[str, Any]) -> BgeIclEmbedding:
    """Two texts per core call, so a batch of more than two runs as several LlamaIndex chunks."""
    return BgeIclEmbedding(**fields, embed_batch_size=2)


def _count_core_calls(monkeypatch: pytest.MonkeyPatch, emb: BgeIclEmbedding) -> list[int]:
    calls: list[int] = []
    for name in ("encode_corpus", "encode_queries"):
        real = getattr(emb.embedder, name)

        def spy(texts: Any, _real: Callable[..., Any] = real, **kwargs: Any) -> Any:
            calls.append(len(texts))
            return _real(texts, **kwargs)

        monkeypatch.setattr(emb.embedder, name, spy)
    return calls


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("texts", "message"), BAD_LISTS)
async def test_text_batch_names_the_bad_item_across_chunks(
    chunked: BgeIclEmbedding, monkeypatch: pytest.MonkeyPatch, texts: Any, message: str
) -> None:
    calls = _count_core_calls(monkeypatch, chunked)
    with pytest.raises(TypeError, match=re.escape(message)):
        chunked.get_text_embedding_batch(texts)
    with pytest.raises(TypeError, match=re.escape(message)):
        await chunked.aget_text_embedding_batch(texts)
    assert calls == []  # checked before the first chunk ran: no wasted forward passes


@pytest.mark.parametrize(("text", "kind"), BAD_SINGLES)
async def test_single_text_methods_name_the_bad_type(emb: BgeIclEmbedding, text: Any, kind: str) -> None:
    for call in (emb.get_query_embedding, emb.aget_query_embedding):
        with pytest.raises(TypeError, match=re.escape(f"query is {kind}, expected str")):
            await _maybe_await(call(text))
    for call in (emb.get_text_embedding, emb.aget_text_embedding):
        with pytest.raises(TypeError, match=re.escape(f"text is {kind}, expected str")):
            await _maybe_await(call(text))


async def _maybe_await(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value


async def test_embeddings_cache_sees_only_checked_input(fields: dict[str, Any]) -> None:
    cache = SimpleKVStore()
    emb = BgeIclEmbedding(**fields, embed_batch_size=2, embeddings_cache=cache)
    with pytest.raises(TypeError, match=re.escape("item 3 is list, expected str")):
        emb.get_text_embedding_batch(["a", "b", "c", ["nested"]])  # was "unhashable type: 'list'"
    with pytest.raises(TypeError, match=re.escape("query is NoneType, expected str")):
        emb.get_query_embedding(None)  # type: ignore[arg-type]  # was "can only concatenate str ..."
    with pytest.raises(TypeError, match=re.escape("text is list, expected str")):
        await emb.aget_text_embedding(["a"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape("item 2 is not valid Unicode")):
        await emb.aget_text_embedding_batch(["a", "b", "bad \ud800"])
    assert cache.get_all(collection="embeddings") == {}
    assert cache.get_all(collection=QUERY_CACHE_COLLECTION) == {}


async def test_empty_list_gives_an_empty_list(chunked: BgeIclEmbedding) -> None:
    assert chunked.get_text_embedding_batch([]) == []
    assert await chunked.aget_text_embedding_batch([]) == []


def test_generators_are_accepted_and_consumed_once(chunked: BgeIclEmbedding) -> None:
    consumed = []

    def texts() -> Iterator[str]:
        for t in [*NOTEBOOK_DOCUMENTS, "third"]:
            consumed.append(t)
            yield t

    expected = chunked.get_text_embedding_batch([*NOTEBOOK_DOCUMENTS, "third"])
    assert chunked.get_text_embedding_batch(texts()) == expected  # type: ignore[arg-type]
    assert consumed == [*NOTEBOOK_DOCUMENTS, "third"]


async def test_empty_whitespace_control_emoji_and_rtl_give_unit_vectors(chunked: BgeIclEmbedding) -> None:
    batch = chunked.get_text_embedding_batch(ODD_TEXTS)
    assert_unit(batch)
    core = chunked.embedder
    assert batch == core.encode_corpus(ODD_TEXTS).tolist()  # one core call, whatever embed_batch_size
    assert_same_vectors(await chunked.aget_text_embedding_batch(ODD_TEXTS), batch)
    for text in ODD_TEXTS:
        query, passage = chunked.get_query_embedding(text), chunked.get_text_embedding(text)
        assert_unit([query, passage])
        assert query == core.encode_queries([text])[0].tolist() == await chunked.aget_query_embedding(text)
        assert passage == core.encode_corpus([text])[0].tolist() == await chunked.aget_text_embedding(text)


async def test_lone_surrogates_are_a_clear_value_error(chunked: BgeIclEmbedding) -> None:
    message = "item 3 is not valid Unicode: surrogates not allowed at position 4"
    with pytest.raises(ValueError, match=re.escape(message)):
        chunked.get_text_embedding_batch(["a", "b", "c", "bad \ud800 text"])
    with pytest.raises(ValueError, match="errors='replace'"):
        await chunked.aget_text_embedding_batch(["\udc80"])
    with pytest.raises(ValueError, match=re.escape("query is not valid Unicode")):
        chunked.get_query_embedding("bad \ud800")
    with pytest.raises(ValueError, match=re.escape("query is not valid Unicode")):
        await chunked.aget_query_embedding("bad \ud800")
    with pytest.raises(ValueError, match=re.escape("text is not valid Unicode")):
        chunked.get_text_embedding("bad \ud800")
    with pytest.raises(ValueError, match=re.escape("text is not valid Unicode")):
        await chunked.aget_text_embedding("bad \ud800")


def _short_limits(fields: dict[str, Any], on_truncation: str, **extra: Any) -> BgeIclEmbedding:
    return BgeIclEmbedding(
        **{**fields, "on_truncation": on_truncation, "query_max_length": 16, "passage_max_length": 16}, **extra
    )


def _truncation_messages(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, TruncationWarning)]


def test_truncation_warns_once_per_core_call(fields: dict[str, Any]) -> None:
    emb = _short_limits(fields, "warn")  # embed_batch_size 64: one core call per batch here
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        emb.get_text_embedding_batch([LONG_PASSAGE, "short", LONG_PASSAGE])
        emb.get_query_embedding(LONG_QUERY)
        emb.get_text_embedding("short")
    assert _truncation_messages(caught) == [
        "2 of 3 passages exceeded passage_max_length=16 tokens and were truncated (first: item 0)",
        "1 of 1 queries exceeded query_max_length=16 tokens and were truncated (first: item 0)",
    ]


def test_truncation_warns_once_per_batch_call_across_chunks(fields: dict[str, Any]) -> None:
    emb = _short_limits(fields, "warn", embed_batch_size=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        emb.get_text_embedding_batch([LONG_PASSAGE, "short", "short", LONG_PASSAGE, "short"])
    # Three embed_batch_size chunks, one warning, counted over the caller's whole list.
    assert _truncation_messages(caught) == [
        "2 of 5 passages exceeded passage_max_length=16 tokens and were truncated (first: item 0)",
    ]


async def test_async_batch_also_warns_once(fields: dict[str, Any]) -> None:
    emb = _short_limits(fields, "warn", embed_batch_size=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await emb.aget_text_embedding_batch(["short", LONG_PASSAGE, "short", "short", LONG_PASSAGE])
    assert _truncation_messages(caught) == [
        "2 of 5 passages exceeded passage_max_length=16 tokens and were truncated (first: item 1)",
    ]


def test_truncation_error_in_a_later_chunk_stops_before_any_chunk_runs(
    fields: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    emb = _short_limits(fields, "error", embed_batch_size=2)
    calls = _count_core_calls(monkeypatch, emb)
    with pytest.raises(TruncationError, match=re.escape("1 of 5 passages exceeded passage_max_length=16")):
        emb.get_text_embedding_batch(["short", "short", "short", "short", LONG_PASSAGE])
    assert calls == []


async def test_truncation_error_mode_raises_and_stays_usable(fields: dict[str, Any]) -> None:
    emb = _short_limits(fields, "error", embed_batch_size=2)
    with pytest.raises(TruncationError, match=re.escape("1 of 2 passages exceeded passage_max_length=16")):
        emb.get_text_embedding_batch(["short", LONG_PASSAGE])
    with pytest.raises(TruncationError, match=re.escape("1 of 1 queries exceeded query_max_length=16")):
        await emb.aget_query_embedding(LONG_QUERY)
    with pytest.raises(TruncationError, match="on_truncation='warn'"):
        await emb.aget_text_embedding_batch(["short", "short", LONG_PASSAGE])
    with pytest.raises(TruncationError):
        emb.get_text_embedding(LONG_PASSAGE)
    assert len(emb.get_text_embedding_batch(["short", "also short", "third"])) == 3


def test_truncation_ignore_is_silent(fields: dict[str, Any]) -> None:
    emb = _short_limits(fields, "ignore")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_unit(emb.get_text_embedding_batch([LONG_PASSAGE]))
        assert_unit(emb.get_query_embedding(LONG_QUERY))


# -- concurrency ----------------------------------------------------------------------------------


def _jobs(emb: BgeIclEmbedding) -> list[tuple[str, Any]]:
    texts = [*NOTEBOOK_QUERIES, *NOTEBOOK_DOCUMENTS, "", "😀 שלום", "summit define " * 20]
    jobs: list[tuple[str, Any]] = []
    for i in range(16):
        kind = ("query", "text", "batch", "batch")[i % 4]
        jobs.append((kind, texts[i % len(texts) :][:5] if kind == "batch" else texts[i % len(texts)]))
    return jobs


def _sync(emb: BgeIclEmbedding, kind: str, arg: Any) -> Any:
    call = {"query": emb.get_query_embedding, "text": emb.get_text_embedding, "batch": emb.get_text_embedding_batch}
    return call[kind](arg)


async def _async(emb: BgeIclEmbedding, kind: str, arg: Any) -> Any:
    call = {
        "query": emb.aget_query_embedding,
        "text": emb.aget_text_embedding,
        "batch": emb.aget_text_embedding_batch,
    }
    return await call[kind](arg)


def test_16_threads_match_serial(chunked: BgeIclEmbedding) -> None:
    jobs = _jobs(chunked)
    serial = [_sync(chunked, *job) for job in jobs]
    barrier = threading.Barrier(len(jobs), timeout=TIMEOUT)

    def run(job: tuple[str, Any]) -> Any:
        barrier.wait()  # all 16 start together
        return _sync(chunked, *job)

    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(run, job) for job in jobs]
        threaded = [f.result(timeout=TIMEOUT) for f in futures]
    assert_same_vectors(threaded, serial)
    assert lock_is_free(chunked.embedder.replicas[0].lock)


async def test_16_asyncio_tasks_match_serial(chunked: BgeIclEmbedding) -> None:
    jobs = _jobs(chunked)
    serial = [_sync(chunked, *job) for job in jobs]
    tasks = [asyncio.create_task(_async(chunked, *job)) for job in jobs]
    results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=TIMEOUT)
    assert_same_vectors(list(results), serial)


async def test_threads_and_tasks_with_a_shared_cache(fields: dict[str, Any]) -> None:
    emb = BgeIclEmbedding(**fields, embed_batch_size=2, embeddings_cache=SimpleKVStore())
    plain = BgeIclEmbedding(**fields, embed_batch_size=2)
    jobs = _jobs(emb)
    serial = [_sync(plain, *job) for job in jobs]
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(_sync, emb, *job) for job in jobs]
        awaited = await asyncio.wait_for(asyncio.gather(*(_async(emb, *job) for job in jobs)), timeout=TIMEOUT)
        threaded = [f.result(timeout=TIMEOUT) for f in futures]
    # The cache keeps whichever vector of a text was stored first (alone or inside a chunk), and batch
    # composition changes float32 rounding, so here results agree to float precision rather than bit for bit.
    np.testing.assert_allclose(_flat(threaded), _flat(serial), atol=1e-6)
    np.testing.assert_allclose(_flat(awaited), _flat(serial), atol=1e-6)


def _flat(results: list[Any]) -> np.ndarray:
    return np.concatenate([np.asarray(r, dtype=np.float64).reshape(-1) for r in results])


# -- recovery -------------------------------------------------------------------------------------


async def test_failed_forward_mid_call_leaves_the_adapter_usable(
    fields: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    emb = BgeIclEmbedding(**fields, batch_size=1, embed_batch_size=3)
    texts = [*NOTEBOOK_DOCUMENTS, "third"]
    expected = emb.get_text_embedding_batch(texts)
    fail = FailOnce(emb.embedder.replicas[0].model, nth=2)  # the second of three forward passes
    fail.install(monkeypatch)
    with pytest.raises(RuntimeError, match="boom"):
        emb.get_text_embedding_batch(texts)
    assert lock_is_free(emb.embedder.replicas[0].lock)
    assert emb.get_text_embedding_batch(texts) == expected

    fail.calls, fail.nth = 0, 1
    with pytest.raises(RuntimeError, match="boom"):
        await asyncio.wait_for(emb.aget_text_embedding_batch(texts), timeout=TIMEOUT)
    assert lock_is_free(emb.embedder.replicas[0].lock)
    assert await asyncio.wait_for(emb.aget_text_embedding_batch(texts), TIMEOUT) == expected


async def test_failed_prefix_cache_build_is_retried(emb: BgeIclEmbedding, monkeypatch: pytest.MonkeyPatch) -> None:
    q = NOTEBOOK_QUERIES[0]
    expected = emb.get_query_embedding(q)
    fresh = emb.with_examples(NOTEBOOK_EXAMPLES)  # a new core embedder: its prefix cache is not built yet
    FailOnce(fresh.embedder.replicas[0].model, nth=1).install(monkeypatch)  # the first forward is the prefix build
    with pytest.raises(RuntimeError, match="boom"):
        await fresh.aget_query_embedding(q)
    assert fresh.get_query_embedding(q) == expected
    assert fresh.embedder.prefix_kv and fresh.embedder.stats.prefix_builds == 1


def test_failed_forward_with_a_cache_stores_nothing(fields: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    cache = SimpleKVStore()
    emb = BgeIclEmbedding(**fields, embeddings_cache=cache)
    FailOnce(emb.embedder.replicas[0].model, nth=1).install(monkeypatch)
    with pytest.raises(RuntimeError, match="boom"):
        emb.get_text_embedding_batch(["never stored"])
    assert cache.get_all(collection="embeddings") == {}
    assert emb.get_text_embedding_batch(["now stored"]) == BgeIclEmbedding(**fields).get_text_embedding_batch(
        ["now stored"]
    )
    assert list(cache.get_all(collection="embeddings")) == ["now stored"]


async def test_a_cancelled_async_call_does_not_block_the_next(
    chunked: BgeIclEmbedding, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = chunked.get_query_embedding(NOTEBOOK_QUERIES[0])
    model = chunked.embedder.replicas[0].model
    await cancel_mid_pass(model, monkeypatch, lambda: chunked.aget_text_embedding_batch(NOTEBOOK_DOCUMENTS))
    assert await asyncio.wait_for(chunked.aget_query_embedding(NOTEBOOK_QUERIES[0]), TIMEOUT) == expected


# -- resources ------------------------------------------------------------------------------------


async def test_repeated_calls_do_not_grow_state(chunked: BgeIclEmbedding) -> None:
    async def round_trip() -> None:
        chunked.get_query_embedding(NOTEBOOK_QUERIES[0])
        chunked.get_text_embedding_batch([*NOTEBOOK_DOCUMENTS, "third"])
        await chunked.aget_query_embedding(NOTEBOOK_QUERIES[1])
        await chunked.aget_text_embedding_batch([*NOTEBOOK_DOCUMENTS, "third"])

    await round_trip()
    prefix = chunked.embedder.prefix_kv[0]
    gc.collect()
    before = len(gc.get_objects())
    for _ in range(5):
        await round_trip()
    gc.collect()
    assert chunked.embedder.prefix_kv[0] is prefix  # one prefix cache per embedder, built once
    assert len(gc.get_objects()) - before < 500
