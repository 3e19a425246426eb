"""BgeIclEmbeddings on bad input, under concurrency, and after a failed forward pass (issue 6)."""

from __future__ import annotations

import asyncio
import gc
import re
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

pytest.importorskip("langchain_core")

from langchain_core.stores import InMemoryByteStore

from bge_icl import TruncationError, TruncationWarning
from langchain_bge_icl import BgeIclEmbeddings
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
    (["a", "b", "c", None], "item 3 is NoneType, expected str"),
    (["a", 7], "item 1 is int, expected str"),
    (["a", 1.5], "item 1 is float, expected str"),
    ([b"bytes"], "item 0 is bytes, expected str"),
    (["a", ["nested"]], "item 1 is list, expected str"),
    ("one string", "texts must be a list of str, got str; wrap one text in a list"),
    (b"bytes", "texts must be a list of str, got bytes"),
    ({"a": "b"}, "texts must be a list of str, got dict"),
    (None, "texts must be a list of str, got NoneType"),
    (42, "texts must be a list of str, got int"),
]
BAD_QUERIES = [
    (None, "query is NoneType, expected str"),
    (3, "query is int, expected str"),
    (b"q", "query is bytes, expected str"),
    (["q"], "query is list, expected str"),
]
DOCS3 = [*NOTEBOOK_DOCUMENTS, "third"]


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("texts", "message"), BAD_LISTS)
def test_embed_documents_names_the_bad_item(embeddings: BgeIclEmbeddings, texts: Any, message: str) -> None:
    with pytest.raises(TypeError, match=re.escape(message)):
        embeddings.embed_documents(texts)


@pytest.mark.parametrize(("texts", "message"), BAD_LISTS[:6])
async def test_aembed_documents_names_the_bad_item(embeddings: BgeIclEmbeddings, texts: Any, message: str) -> None:
    with pytest.raises(TypeError, match=re.escape(message)):
        await embeddings.aembed_documents(texts)


@pytest.mark.parametrize(("text", "message"), BAD_QUERIES)
async def test_embed_query_names_the_bad_type(embeddings: BgeIclEmbeddings, text: Any, message: str) -> None:
    with pytest.raises(TypeError, match=re.escape(message)):
        embeddings.embed_query(text)
    with pytest.raises(TypeError, match=re.escape(message)):
        await embeddings.aembed_query(text)


async def test_cached_wrapper_checks_before_touching_the_store(embeddings: BgeIclEmbeddings) -> None:
    """CacheBackedEmbeddings would hash None (or a surrogate) as a key; the helper's checks come first."""
    classic = pytest.importorskip("langchain_classic.embeddings")
    store = InMemoryByteStore()
    cached = embeddings.cached(store)
    assert isinstance(cached, classic.CacheBackedEmbeddings)
    with pytest.raises(TypeError, match=re.escape("item 3 is NoneType, expected str")):
        cached.embed_documents(["a", "b", "c", None])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=re.escape("texts must be a list of str, got str")):
        await cached.aembed_documents("abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=re.escape("query is NoneType, expected str")):
        cached.embed_query(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape("query is not valid Unicode")):
        await cached.aembed_query("bad \ud800")
    with pytest.raises(ValueError, match=re.escape("item 1 is not valid Unicode")):
        cached.embed_documents(["fine", "bad \udfff"])
    with pytest.raises(TypeError, match=re.escape("item 1 is int, expected str")):
        await cached.aembed_documents(["fine", 7])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=re.escape("query is int, expected str")):
        await cached.aembed_query(7)  # type: ignore[arg-type]
    assert list(store.yield_keys()) == []


async def test_empty_list_gives_an_empty_list(embeddings: BgeIclEmbeddings) -> None:
    assert embeddings.embed_documents([]) == []
    assert await embeddings.aembed_documents([]) == []
    assert embeddings.embed_documents(iter([])) == []  # type: ignore[arg-type]


def test_generators_are_accepted_and_consumed_once(embeddings: BgeIclEmbeddings) -> None:
    consumed = []

    def texts() -> Iterator[str]:
        for t in NOTEBOOK_DOCUMENTS:
            consumed.append(t)
            yield t

    assert embeddings.embed_documents(texts()) == embeddings.embed_documents(NOTEBOOK_DOCUMENTS)  # type: ignore[arg-type]
    assert consumed == NOTEBOOK_DOCUMENTS


async def test_empty_whitespace_control_emoji_and_rtl_give_unit_vectors(embeddings: BgeIclEmbeddings) -> None:
    documents = embeddings.embed_documents(ODD_TEXTS)
    queries = [embeddings.embed_query(t) for t in ODD_TEXTS]
    assert_unit(documents)
    assert_unit(queries)
    assert documents == embeddings.embedder.encode_corpus(ODD_TEXTS).tolist()
    assert queries == [embeddings.embedder.encode_queries([t])[0].tolist() for t in ODD_TEXTS]
    assert embeddings.embed_documents([""]) == embeddings.embed_documents([""])  # "" is defined and deterministic
    assert await embeddings.aembed_documents(ODD_TEXTS) == documents
    assert await embeddings.aembed_query("") == queries[0]


async def test_lone_surrogates_are_a_clear_value_error(embeddings: BgeIclEmbeddings) -> None:
    message = "item 1 is not valid Unicode: surrogates not allowed at position 4"
    with pytest.raises(ValueError, match=re.escape(message)):
        embeddings.embed_documents(["fine", "bad \ud800 text"])
    with pytest.raises(ValueError, match="errors='replace'"):
        await embeddings.aembed_documents(["\udc80"])
    with pytest.raises(ValueError, match=re.escape("query is not valid Unicode")):
        embeddings.embed_query("bad \ud800")
    with pytest.raises(ValueError, match=re.escape("query is not valid Unicode")):
        await embeddings.aembed_query("bad \ud800")


def _short_limits(tiny_path: str, on_truncation: str) -> BgeIclEmbeddings:
    return BgeIclEmbeddings(
        model=tiny_path,
        devices="cpu",
        examples_for_task=NOTEBOOK_EXAMPLES,
        query_max_length=16,
        passage_max_length=16,
        on_truncation=on_truncation,  # type: ignore[arg-type]
    )


def test_truncation_warns_once_per_call_with_count_and_limit(tiny_path: str) -> None:
    emb = _short_limits(tiny_path, "warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        emb.embed_documents([LONG_PASSAGE, "short", LONG_PASSAGE])
        emb.embed_query(LONG_QUERY)
        emb.embed_documents(["short"])
    messages = [str(w.message) for w in caught if issubclass(w.category, TruncationWarning)]
    assert messages == [
        "2 of 3 passages exceeded passage_max_length=16 tokens and were truncated (first: item 0)",
        "1 of 1 queries exceeded query_max_length=16 tokens and were truncated (first: item 0)",
    ]


async def test_truncation_error_mode_raises_and_stays_usable(tiny_path: str) -> None:
    emb = _short_limits(tiny_path, "error")
    with pytest.raises(TruncationError, match=re.escape("1 of 2 passages exceeded passage_max_length=16")):
        emb.embed_documents(["short", LONG_PASSAGE])
    with pytest.raises(TruncationError, match=re.escape("1 of 1 queries exceeded query_max_length=16")):
        await emb.aembed_query(LONG_QUERY)
    with pytest.raises(TruncationError, match="on_truncation='warn'"):
        await emb.aembed_documents([LONG_PASSAGE])
    assert len(emb.embed_documents(["short"])) == 1


def test_truncation_ignore_is_silent(tiny_path: str) -> None:
    emb = _short_limits(tiny_path, "ignore")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_unit(emb.embed_documents([LONG_PASSAGE]))
        assert_unit([emb.embed_query(LONG_QUERY)])


# -- concurrency ----------------------------------------------------------------------------------


def _jobs(embeddings: BgeIclEmbeddings) -> list[tuple[Callable[[Any], Any], Any]]:
    texts = [*NOTEBOOK_QUERIES, *NOTEBOOK_DOCUMENTS, "", "😀 שלום", "summit define " * 20]
    out: list[tuple[Callable[[Any], Any], Any]] = []
    for i in range(16):
        if i % 2:
            out.append((embeddings.embed_query, texts[i % len(texts)]))
        else:
            out.append((embeddings.embed_documents, texts[i % len(texts) :][:3]))
    return out


def test_16_threads_match_serial(embeddings: BgeIclEmbeddings) -> None:
    jobs = _jobs(embeddings)
    serial = [fn(arg) for fn, arg in jobs]
    barrier = threading.Barrier(len(jobs), timeout=TIMEOUT)

    def run(job: tuple[Callable[[Any], Any], Any]) -> Any:
        barrier.wait()  # all 16 start together
        return job[0](job[1])

    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(run, job) for job in jobs]
        threaded = [f.result(timeout=TIMEOUT) for f in futures]
    assert_same_vectors(threaded, serial)
    assert lock_is_free(embeddings.embedder.replicas[0].lock)


async def test_16_asyncio_tasks_match_serial(embeddings: BgeIclEmbeddings) -> None:
    jobs = _jobs(embeddings)
    serial = [fn(arg) for fn, arg in jobs]
    asynchronous = {
        embeddings.embed_query: embeddings.aembed_query,
        embeddings.embed_documents: embeddings.aembed_documents,
    }
    tasks = [asyncio.create_task(asynchronous[fn](arg)) for fn, arg in jobs]
    results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=TIMEOUT)
    assert_same_vectors(list(results), serial)


async def test_threads_and_tasks_on_two_adapters_sharing_one_model(embeddings: BgeIclEmbeddings) -> None:
    zero_shot = embeddings.with_examples(None)
    assert zero_shot.embedder.replicas[0] is embeddings.embedder.replicas[0]
    q = NOTEBOOK_QUERIES[0]
    expected = (embeddings.embed_query(q), zero_shot.embed_query(q), embeddings.embed_documents(NOTEBOOK_DOCUMENTS))
    with ThreadPoolExecutor(4) as pool:
        threaded = [pool.submit(embeddings.embed_query, q), pool.submit(zero_shot.embed_query, q)]
        awaited = await asyncio.wait_for(
            asyncio.gather(*(embeddings.aembed_documents(NOTEBOOK_DOCUMENTS) for _ in range(6))), timeout=TIMEOUT
        )
        assert_same_vectors([f.result(timeout=TIMEOUT) for f in threaded], list(expected[:2]))
    for r in awaited:
        assert_same_vectors(r, expected[2])


# -- recovery -------------------------------------------------------------------------------------


async def test_failed_forward_mid_call_leaves_the_adapter_usable(
    tiny_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    emb = BgeIclEmbeddings(model=tiny_path, devices="cpu", batch_size=1, on_truncation="ignore")
    expected = emb.embed_documents(DOCS3)
    fail = FailOnce(emb.embedder.replicas[0].model, nth=2)  # the second of three forward passes
    fail.install(monkeypatch)
    with pytest.raises(RuntimeError, match="boom"):
        emb.embed_documents(DOCS3)
    assert lock_is_free(emb.embedder.replicas[0].lock)
    assert emb.embed_documents(DOCS3) == expected

    fail.calls, fail.nth = 0, 1
    with pytest.raises(RuntimeError, match="boom"):
        await asyncio.wait_for(emb.aembed_documents(NOTEBOOK_DOCUMENTS), timeout=TIMEOUT)
    assert lock_is_free(emb.embedder.replicas[0].lock)
    assert await asyncio.wait_for(emb.aembed_documents(DOCS3), TIMEOUT) == expected


def test_failed_prefix_cache_build_is_retried(embeddings: BgeIclEmbeddings, monkeypatch: pytest.MonkeyPatch) -> None:
    q = NOTEBOOK_QUERIES[0]
    expected = embeddings.embed_query(q)
    fresh = embeddings.with_examples(NOTEBOOK_EXAMPLES)  # a new core embedder: its prefix cache is not built yet
    FailOnce(fresh.embedder.replicas[0].model, nth=1).install(monkeypatch)  # the first forward is the prefix build
    with pytest.raises(RuntimeError, match="boom"):
        fresh.embed_query(q)
    assert fresh.embed_query(q) == expected
    assert fresh.embedder.prefix_kv and fresh.embedder.stats.prefix_builds == 1


async def test_a_cancelled_async_call_does_not_block_the_next(
    embeddings: BgeIclEmbeddings, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = embeddings.embed_query(NOTEBOOK_QUERIES[0])
    model = embeddings.embedder.replicas[0].model
    await cancel_mid_pass(model, monkeypatch, lambda: embeddings.aembed_documents(NOTEBOOK_DOCUMENTS))
    assert await asyncio.wait_for(embeddings.aembed_query(NOTEBOOK_QUERIES[0]), TIMEOUT) == expected


# -- resources ------------------------------------------------------------------------------------


async def test_repeated_calls_do_not_grow_state(embeddings: BgeIclEmbeddings) -> None:
    async def round_trip() -> None:
        embeddings.embed_query(NOTEBOOK_QUERIES[0])
        embeddings.embed_documents(NOTEBOOK_DOCUMENTS)
        await embeddings.aembed_query(NOTEBOOK_QUERIES[1])
        await embeddings.aembed_documents(NOTEBOOK_DOCUMENTS)

    await round_trip()
    prefix = embeddings.embedder.prefix_kv[0]
    gc.collect()
    before = len(gc.get_objects())
    for _ in range(5):
        await round_trip()
    gc.collect()
    assert embeddings.embedder.prefix_kv[0] is prefix  # one prefix cache per embedder, built once
    assert len(gc.get_objects()) - before < 500


def test_the_last_adapter_gone_frees_the_weights(tiny_path: str, tmp_path: Any) -> None:
    emb = BgeIclEmbeddings(model=tiny_path, devices="cpu", cache_dir=str(tmp_path))  # its own registry entry
    loaded = weakref.ref(emb.embedder.replicas[0])
    emb.embed_documents(["x"])
    del emb
    gc.collect()
    assert loaded() is None


# -- options that reach the core through the adapter ----------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"attn_implementation": "flash"}, "attn_implementation='flash' is not supported; valid: ('sdpa', 'eager', "),
        ({"model": ""}, "model_name must be a non-empty str (hub id or local directory), got ''"),
        ({"max_batch_tokens": 0}, "max_batch_tokens must be a positive int, got 0"),
        ({"devices": []}, "devices=[] names no device"),
        ({"query_instruction_format": "{"}, "is not a valid format string"),
        ({"examples_instruction_format": "{}{}"}, "must have exactly 3 positional '{}' slots, found 2 field(s)"),
        ({"examples_for_task": [{"query": "q", "response": "r"}]}, "examples_for_task[0] has no 'instruct'"),
        ({"examples_for_task": [{"query": "q", "response": "r", "answer": "a"}]}, "unknown key(s) ['answer']"),
    ],
)
def test_core_option_errors_come_through_the_adapter(tiny_path: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        BgeIclEmbeddings(**{"model": tiny_path, "devices": "cpu", **options})
