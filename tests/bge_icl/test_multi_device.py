"""Several replicas in one process (devices=["cpu", "cpu"]): same vectors, same order, both replicas work."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bge_icl import ICLEmbedder
from tests.bge_icl.cases import PASSAGES, QUERIES, WEB
from tests.conftest import NOTEBOOK_EXAMPLES

TEXTS = [f"text {i}: " + "words " * (1 + (i * 7) % 23) for i in range(96)]
OPTIONS: dict[str, Any] = {
    "examples_for_task": NOTEBOOK_EXAMPLES,
    "query_instruction_for_retrieval": WEB,
    "batch_size": 4,
    "on_truncation": "ignore",
}


@pytest.fixture(scope="module")
def single(tiny_dir: Path) -> ICLEmbedder:
    return ICLEmbedder(str(tiny_dir), devices="cpu", **OPTIONS)


@pytest.fixture(scope="module")
def double(tiny_dir: Path) -> ICLEmbedder:
    return ICLEmbedder(str(tiny_dir), devices=["cpu", "cpu"], **OPTIONS)


def test_two_replicas_are_two_models(single: ICLEmbedder, double: ICLEmbedder) -> None:
    first, second = double.replicas
    assert first is single.replicas[0]  # the first replica is shared with the single-device embedder
    assert second is not first and second.model is not first.model
    assert double.replica_devices == [first.device, second.device]


@pytest.fixture
def slow_first_replica(double: ICLEmbedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make replica 0 sleep 5 ms per batch, so replica 1 always gets batches (no reliance on thread timing)."""
    model = double.replicas[0].model
    forward = model.forward

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.005)
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", slow)


@pytest.mark.parametrize("kind", ["queries", "passages"])
@pytest.mark.usefixtures("slow_first_replica")
def test_results_equal_single_device_in_order_and_both_replicas_work(
    single: ICLEmbedder, double: ICLEmbedder, kind: str
) -> None:
    texts = TEXTS + (QUERIES if kind == "queries" else PASSAGES)
    before = double.stats.replica_rows
    if kind == "queries":
        expected, got = single.encode_queries(texts), double.encode_queries(texts)
    else:
        expected, got = single.encode_corpus(texts), double.encode_corpus(texts)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-5
    done = [after - b for after, b in zip(double.stats.replica_rows, before, strict=True)]
    assert sum(done) == len(texts)
    assert all(d > 0 for d in done), f"a replica did no work: {done}"


def test_each_replica_keeps_its_own_prefix_cache(double: ICLEmbedder) -> None:
    double.encode_queries(TEXTS)
    caches = double.prefix_kv
    assert set(caches) == {0, 1} and double.stats.prefix_builds == 2
    assert caches[0] is not caches[1]
    assert caches[0].ids == caches[1].ids


@pytest.mark.usefixtures("slow_first_replica")
def test_failure_on_one_replica_surfaces_and_embedder_stays_usable(
    double: ICLEmbedder, single: ICLEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    second = double.replicas[1].model

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("replica 1 failed")

    monkeypatch.setattr(second, "forward", broken)
    with pytest.raises(RuntimeError, match="replica 1 failed"):
        double.encode_corpus(TEXTS)
    monkeypatch.undo()
    assert np.abs(double.encode_corpus(TEXTS) - single.encode_corpus(TEXTS)).max() <= 1e-5


def test_warm_up_builds_every_replicas_prefix_cache_and_embeds_nothing(double: ICLEmbedder) -> None:
    fresh = double.with_options()  # its own (empty) prefix caches, on the same two replicas
    assert fresh.prefix_kv == {}
    fresh.warm_up()
    caches = fresh.prefix_kv
    assert set(caches) == {0, 1} and fresh.stats.prefix_builds == 2 and sum(fresh.stats.replica_rows) == 0
    assert caches[0].ids == caches[1].ids == fresh.prefix_ids
    fresh.encode_queries(TEXTS[:8])
    assert fresh.prefix_kv[0] is caches[0] and fresh.stats.prefix_builds == 2  # used, never rebuilt
