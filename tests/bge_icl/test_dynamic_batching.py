"""Dynamic batching on the real (tiny) model: concurrent calls share forward passes, get a solo call's vectors within
1e-6, small calls do not wait behind big ones, failures and cancellations stay with their own call."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bge_icl import ICLEmbedder
from bge_icl.errors import InputTypeError, OptionValueError
from tests.bge_icl.cases import PASSAGES, QUERIES, WEB
from tests.conftest import NOTEBOOK_EXAMPLES

TOLERANCE = 1e-6  # docs/core.md: what concurrent calls are guaranteed against a solo call (float32)
CORPUS = [f"passage {i}: " + "words of some length " * (1 + i % 9) for i in range(120)]


@pytest.fixture(scope="module")
def models(tiny_dir: Path) -> dict[str, ICLEmbedder]:
    """One loaded model, three embedders on it: two example sets and zero-shot."""
    base = ICLEmbedder(str(tiny_dir), devices="cpu", dtype="float32", on_truncation="ignore",
                       query_instruction_for_retrieval=WEB, examples_for_task=NOTEBOOK_EXAMPLES,
                       max_batch_tokens=16384)  # fmt: skip
    return {"two": base, "one": base.with_examples(NOTEBOOK_EXAMPLES[:1]), "zero": base.with_examples(None)}


@pytest.fixture
def slow(models: dict[str, ICLEmbedder]) -> Iterator[list[int]]:
    """Every forward pass of the shared model (any path) sleeps 20 ms and records its row count."""
    rows: list[int] = []

    def hook(module: Any, args: tuple[Any, ...]) -> None:
        time.sleep(0.02)
        rows.append(int(args[0].shape[0]))

    handle = models["two"].replicas[0].model.embed_tokens.register_forward_pre_hook(hook)
    yield rows
    handle.remove()


def _calls() -> list[tuple[str, str, list[str]]]:
    out = []
    for i in range(24):
        which = ("two", "one", "zero")[i % 3]
        kind = "queries" if i % 2 else "passages"
        texts = (QUERIES if kind == "queries" else PASSAGES)[i % 4 :][:3]
        out.append((which, kind, texts))
    return out


def _solo(models: dict[str, ICLEmbedder], which: str, kind: str, texts: list[str]) -> np.ndarray:
    emb = models[which]
    return emb.encode_queries(texts) if kind == "queries" else emb.encode_corpus(texts)


def test_concurrent_calls_share_passes_and_equal_solo_calls(models: dict[str, ICLEmbedder], slow: list[int]) -> None:
    calls = _calls()
    for emb in models.values():
        emb.encode_queries(["warm up"])  # builds each example set's prefix cache
    slow.clear()
    solo = [_solo(models, *call) for call in calls]
    solo_passes = len(slow)
    rows = sum(len(texts) for _, _, texts in calls)
    loaded = models["two"].replicas[0]
    slow.clear()
    with ThreadPoolExecutor(len(calls)) as pool:
        with loaded.lock:  # the model is busy: every call queues, as under load
            futures = [pool.submit(_solo, models, *call) for call in calls]
            while models["two"].scheduler_stats.queued_rows < rows:
                time.sleep(0.005)
        together = [f.result(30) for f in futures]
    for a, b in zip(solo, together, strict=True):
        assert a.shape == b.shape and np.abs(a - b).max() <= TOLERANCE
    assert sum(slow) == rows  # every row ran once
    assert rows / len(slow) >= 2 * rows / solo_passes  # at least twice as many rows per pass as the calls alone


async def test_asyncio_calls_share_passes(models: dict[str, ICLEmbedder], slow: list[int]) -> None:
    emb = models["two"]
    queries = [f"question number {i}" for i in range(16)]
    solo = emb.encode_queries(queries)
    slow.clear()
    results = await asyncio.gather(*(emb.aembed([q], "queries") for q in queries))
    got = np.stack([r.vectors[0] for r in results])
    assert np.abs(got - solo).max() <= TOLERANCE
    assert len(slow) < 16 and sum(slow) == 16
    assert [r.tokens for r in results] == [(len(ids),) for ids in emb.tokenize_queries(queries).ids]


def test_a_small_call_is_served_within_a_few_passes_of_a_big_one(
    models: dict[str, ICLEmbedder], slow: list[int]
) -> None:
    emb = models["zero"].with_options(batch_size=4)  # many short passes for the big call
    big = threading.Thread(target=emb.encode_corpus, args=(CORPUS,))
    slow.clear()
    big.start()
    while len(slow) < 3:  # the corpus call is under way
        time.sleep(0.005)
    passes_before = len(slow)
    models["two"].encode_queries(["a query while the corpus runs"])
    passes_waited = len(slow) - passes_before
    big.join(30)
    assert not big.is_alive()
    assert len(slow) >= len(CORPUS) / 4  # the big call had that many passes
    assert passes_waited <= 3  # the pass that was running, its own (and maybe one more that started meanwhile)


def test_a_bad_input_fails_only_its_own_call(models: dict[str, ICLEmbedder], slow: list[int]) -> None:
    emb = models["two"]
    with ThreadPoolExecutor(3) as pool:
        good = [pool.submit(emb.encode_corpus, CORPUS[:20]), pool.submit(emb.encode_queries, QUERIES)]
        bad = pool.submit(emb.encode_corpus, ["fine", None, "fine"])
        with pytest.raises(InputTypeError, match=re.escape("item 1 is NoneType, expected str")):
            bad.result(30)
        assert [f.result(30).shape[0] for f in good] == [20, len(QUERIES)]


def test_a_failing_forward_fails_only_the_call_it_belongs_to(models: dict[str, ICLEmbedder],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    emb = models["zero"]
    poison = emb.tokenize_corpus(["zebra"]).ids[0][1]  # a token only the failing call has
    assert all(poison not in ids for ids in emb.tokenize_corpus(CORPUS).ids)
    expected = emb.encode_corpus(CORPUS[:30])
    model = emb.replicas[0].model
    forward = model.forward

    def broken(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.01)
        if poison in kwargs["input_ids"].flatten().tolist():
            raise RuntimeError("a kernel failed on this batch")
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", broken)
    with ThreadPoolExecutor(4) as pool:
        goods = [pool.submit(emb.encode_corpus, CORPUS[:30]) for _ in range(3)]
        bad = pool.submit(emb.encode_corpus, ["zebra", *CORPUS[:5]])
        with pytest.raises(RuntimeError, match="a kernel failed on this batch"):
            bad.result(60)
        for future in goods:
            assert np.abs(future.result(60) - expected).max() <= TOLERANCE


async def test_a_cancelled_call_stops_after_the_running_pass(models: dict[str, ICLEmbedder], slow: list[int]) -> None:
    emb = models["zero"].with_options(batch_size=2)
    slow.clear()
    task = asyncio.create_task(emb.aembed(CORPUS, "passages"))
    while not slow:
        await asyncio.sleep(0.002)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)  # the pass that was running when it was cancelled finishes
    assert sum(slow) <= 4 and emb.stats.queued_rows == 0  # 2 passes of 2 rows at most, out of 60 passes
    assert np.abs(emb.encode_corpus(CORPUS[:3]) - models["zero"].encode_corpus(CORPUS[:3])).max() <= TOLERANCE


def test_batch_wait_ms_lets_later_calls_join_a_pass(models: dict[str, ICLEmbedder], slow: list[int]) -> None:
    emb = models["zero"].with_options(batch_wait_ms=300)
    slow.clear()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(emb.encode_corpus, ["first"])
        time.sleep(0.05)
        second = pool.submit(emb.encode_corpus, ["second"])
        first.result(30), second.result(30)
    assert slow == [2]  # one pass for both calls
    message = "batch_wait_ms must be a number of milliseconds >= 0, got -1"
    with pytest.raises(OptionValueError, match=re.escape(message)):
        emb.with_options(batch_wait_ms=-1)


def test_stats_of_one_embedder_and_of_the_whole_model(models: dict[str, ICLEmbedder]) -> None:
    a, b = models["two"].with_options(), models["zero"].with_options()
    before = a.scheduler_stats
    a.encode_queries(QUERIES)
    b.encode_corpus(PASSAGES)
    assert sum(a.stats.replica_rows) == len(QUERIES) and sum(b.stats.replica_rows) == len(PASSAGES)
    after = a.scheduler_stats
    assert sum(after.replica_rows) - sum(before.replica_rows) == len(QUERIES) + len(PASSAGES)
    assert after.forward_passes - before.forward_passes == a.stats.forward_passes + b.stats.forward_passes
    assert after.queued_rows == 0
