"""The scheduler on its own, with lanes whose forward pass is a recording fake: how passes are cut, shared, ordered,
retried and cancelled. (Against the real model: tests/bge_icl/test_dynamic_batching.py.)"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

from bge_icl.batching import copied_prefix_cost, shared_prefix_cost
from bge_icl.counters import Counters
from bge_icl.job import Job, Lane, Rows
from bge_icl.loading import LoadedModel
from bge_icl.scheduler import Scheduler
from bge_icl.scheduling import STARVATION_PASSES

H = 3


class FakeModel:
    """A forward pass that records its rows (each id list's first token) and returns that token as the vector."""

    def __init__(self) -> None:
        self.passes: list[list[int]] = []
        self.gate: threading.Event | None = None  # when set, each pass waits for it (then it is cleared)
        self.started = threading.Event()
        self.fail_on: int | None = None  # a pass holding this token raises
        self.oom_above: int | None = None  # a pass with more padded tokens raises torch.OutOfMemoryError

    def forward(self, replica: int, loaded: LoadedModel, ids: list[Sequence[int]]) -> torch.Tensor:
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        firsts = [int(x[0]) for x in ids]
        if self.oom_above is not None and len(ids) * max(len(x) for x in ids) > self.oom_above:
            raise torch.OutOfMemoryError(f"fake OOM for {len(ids)} rows")
        if self.fail_on is not None and self.fail_on in firsts:
            raise RuntimeError(f"row {self.fail_on} breaks the pass")
        self.passes.append(firsts)
        return torch.tensor(firsts, dtype=torch.float32)[:, None].repeat(1, H)  # (B, H)


def _loaded() -> LoadedModel:
    return LoadedModel(None, None, torch.device("cpu"), torch.float32, "sdpa", ("fake",))  # type: ignore[arg-type]


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


@pytest.fixture
def scheduler() -> Scheduler:
    return Scheduler([_loaded()])


def _lane(model: FakeModel, key: str = "whole", prefix_tokens: int = 0, cost: Any = copied_prefix_cost) -> Lane:
    return Lane((key,), prefix_tokens, cost, model.forward)


def _job(lane: Lane, tokens: Sequence[int], lengths: Sequence[int], *, budget: int = 1000, rows: int | None = None,
         wait: float = 0.0, counters: Counters | None = None) -> Job:  # fmt: skip
    """A job whose row i is the id list ``[tokens[i]] * (lane.prefix_tokens + lengths[i])`` (a prefix, then its
    own)."""
    ids = [[t] * (lane.prefix_tokens + n) for t, n in zip(tokens, lengths, strict=True)]
    group = Rows(lane, range(len(ids)), list(lengths))
    return Job(ids, [group], lambda t: t.float(), H, budget, rows, wait, counters=counters)


def _check(job: Job, tokens: Sequence[int]) -> None:
    out = job.result()
    np.testing.assert_array_equal(out, np.repeat(np.asarray(tokens, dtype=np.float32)[:, None], H, axis=1))


def test_one_call_is_cut_longest_first_under_the_budget_and_row_limit(scheduler: Scheduler, model: FakeModel) -> None:
    tokens, lengths = list(range(10)), [3, 9, 1, 9, 4, 4, 2, 8, 5, 7]
    job = scheduler.submit(_job(_lane(model), tokens, lengths, budget=20, rows=3))
    _check(job, tokens)  # every row back, in input order
    assert sorted(t for p in model.passes for t in p) == tokens
    for p in model.passes:
        longest = max(lengths[t] for t in p)
        assert len(p) <= 3 and (len(p) == 1 or len(p) * longest <= 20)
        assert [lengths[t] for t in p] == sorted((lengths[t] for t in p), reverse=True)
    assert model.passes[0] == [1, 3]  # the two 9-token rows: 2 x 9 <= 20, a third would not fit


def test_a_call_is_covered_longest_first_under_both_limits(scheduler: Scheduler, model: FakeModel) -> None:
    lengths = [5, 50, 7, 50, 1, 30, 30, 2]
    tokens = list(range(len(lengths)))
    _check(scheduler.submit(_job(_lane(model), tokens, lengths, budget=100, rows=3)), tokens)
    assert sorted(t for p in model.passes for t in p) == tokens
    for p in model.passes:
        assert len(p) <= 3
        assert len(p) == 1 or len(p) * max(lengths[t] for t in p) <= 100
    firsts = [lengths[p[0]] for p in model.passes]
    assert firsts == sorted(firsts, reverse=True)


def test_the_cached_prefix_counts_and_out_of_memory_halves_the_budget(scheduler: Scheduler, model: FakeModel) -> None:
    model.oom_above = 150  # 4 rows of 40 cached + 10 own tokens fail, 2 rows fit
    lane = _lane(model, "copy", prefix_tokens=40)
    job = scheduler.submit(_job(lane, [0, 1, 2, 3], [10, 10, 10, 10], budget=200, rows=8))
    _check(job, [0, 1, 2, 3])  # the first pass (4 rows, 4 x (10 + 40) = 200 tokens) failed and ran again halved
    assert job.budget == 100 and model.passes == [[0, 1], [2, 3]]


def test_the_cached_prefix_counts_in_a_rows_cost(scheduler: Scheduler, model: FakeModel) -> None:
    cost = shared_prefix_cost(type("C", (), {"num_attention_heads": 32, "intermediate_size": 14336})())
    shared = Lane(("prefix",), 500, cost, model.forward)
    scheduler.submit(_job(shared, [0, 1, 2], [30, 30, 30], budget=3 * cost(30, 500))).result()
    copied = Lane(("copy",), 500, copied_prefix_cost, model.forward)
    scheduler.submit(_job(copied, [3, 4, 5], [30, 30, 30], budget=3 * cost(30, 500))).result()
    assert model.passes == [[0, 1, 2], [3], [4], [5]]  # the copy path pays 530 tokens a row, so one row a pass


def test_waiting_calls_share_a_pass_and_each_gets_its_own_rows(scheduler: Scheduler, model: FakeModel) -> None:
    lane = _lane(model)
    model.gate = threading.Event()
    first = scheduler.submit(_job(lane, [100], [4]))
    assert model.started.wait(5)  # the worker holds the first call's pass
    calls = [scheduler.submit(_job(lane, [10 * i, 10 * i + 1], [4, 4])) for i in range(1, 5)]
    model.gate.set()
    _check(first, [100])
    for i, job in enumerate(calls, start=1):
        _check(job, [10 * i, 10 * i + 1])
    assert len(model.passes) == 2 and sorted(model.passes[1]) == [10, 11, 20, 21, 30, 31, 40, 41]


def test_other_lanes_never_share_a_pass(scheduler: Scheduler, model: FakeModel) -> None:
    model.gate = threading.Event()
    blocker = scheduler.submit(_job(_lane(model), [0], [2]))
    assert model.started.wait(5)
    a = scheduler.submit(_job(_lane(model, "a"), [1, 2], [2, 2]))
    b = scheduler.submit(_job(_lane(model, "b"), [3], [2]))
    model.gate.set()
    for job, tokens in ((blocker, [0]), (a, [1, 2]), (b, [3])):
        _check(job, tokens)
    assert sorted(map(sorted, model.passes)) == [[0], [1, 2], [3]]


def test_a_small_call_goes_before_the_rest_of_a_big_one(scheduler: Scheduler, model: FakeModel) -> None:
    lane = _lane(model)
    model.gate = threading.Event()
    big = scheduler.submit(_job(lane, list(range(100, 140)), [8] * 40, budget=16))  # 2 rows a pass: 20 passes
    assert model.started.wait(5)
    small = scheduler.submit(_job(lane, [7], [8], budget=16))
    model.gate.set()
    _check(small, [7])
    _check(big, list(range(100, 140)))
    at = next(i for i, p in enumerate(model.passes) if 7 in p)
    assert at == 1  # right after the pass that was running when it arrived (shared with big's next row)


def test_a_stream_of_small_calls_cannot_starve_a_big_one(scheduler: Scheduler, model: FakeModel) -> None:
    lane = _lane(model)
    big = _job(lane, list(range(1000, 1010)), [8] * 10, budget=8)  # one row a pass
    model.gate = threading.Event()
    scheduler.submit(_job(lane, [0], [8], budget=8))
    assert model.started.wait(5)
    scheduler.submit(big)
    smalls = [scheduler.submit(_job(lane, [i], [8], budget=8)) for i in range(1, 3 * STARVATION_PASSES)]
    model.gate.set()
    for i, job in enumerate(smalls, start=1):
        _check(job, [i])
    first_big = next(i for i, p in enumerate(model.passes) if p[0] >= 1000)
    assert first_big <= STARVATION_PASSES + 1  # not behind all 3 x STARVATION_PASSES small calls
    _check(big, list(range(1000, 1010)))


def test_a_failing_shared_pass_is_retried_call_by_call(scheduler: Scheduler, model: FakeModel) -> None:
    lane = _lane(model)
    model.gate = threading.Event()
    blocker = scheduler.submit(_job(lane, [1], [2]))
    assert model.started.wait(5)
    good, bad, other = (scheduler.submit(_job(lane, t, [2] * len(t))) for t in ([10, 11], [66, 12], [13]))
    model.fail_on = 66
    model.gate.set()
    _check(blocker, [1])
    with pytest.raises(RuntimeError, match="row 66 breaks the pass"):
        bad.result()
    _check(good, [10, 11])
    _check(other, [13])
    model.fail_on = None
    _check(scheduler.submit(_job(lane, [5], [2])), [5])  # the scheduler keeps serving


def test_out_of_memory_halves_the_budget_and_loses_nothing(scheduler: Scheduler, model: FakeModel) -> None:
    model.oom_above = 12
    tokens = list(range(20))
    job = scheduler.submit(_job(_lane(model), tokens, [4] * 20, budget=64))
    _check(job, tokens)
    assert all(len(p) * 4 <= 12 for p in model.passes) and sorted(t for p in model.passes for t in p) == tokens
    assert job.budget <= 12  # halved from 64 until it fit, and kept for the rest of the call


def test_out_of_memory_on_one_row_fails_that_call_with_advice(scheduler: Scheduler, model: FakeModel) -> None:
    model.oom_above = 3
    with pytest.raises(torch.OutOfMemoryError, match=re.escape("for a single sequence of 8 tokens; lower")):
        scheduler.submit(_job(_lane(model), [1], [8])).result()
    model.oom_above = None
    _check(scheduler.submit(_job(_lane(model), [2], [8])), [2])


def test_a_cancelled_call_drops_the_rows_that_have_not_run(scheduler: Scheduler, model: FakeModel) -> None:
    lane = _lane(model)
    model.gate = threading.Event()
    counters = Counters(1)
    job = scheduler.submit(_job(lane, list(range(10)), [4] * 10, budget=8, counters=counters))  # 2 rows a pass
    assert model.started.wait(5)
    scheduler.cancel(job)
    model.gate.set()
    assert job.future.cancelled() and job.cancelled
    later = scheduler.submit(_job(lane, [99], [4]))
    _check(later, [99])
    assert [t for p in model.passes for t in p] == [0, 1, 99]  # the running pass finished; nothing else of it ran
    assert counters.snapshot() == ((0,), 0, 0) and scheduler.counters.snapshot()[2] == 0  # its pass was discarded


def test_batch_wait_gathers_rows_that_arrive_soon_after(model: FakeModel) -> None:
    scheduler = Scheduler([_loaded()])
    lane = _lane(model)
    first = scheduler.submit(_job(lane, [1], [2], wait=0.5))
    time.sleep(0.05)
    second = scheduler.submit(_job(lane, [2], [2], wait=0.5))
    _check(first, [1])
    _check(second, [2])
    assert model.passes == [[1, 2]]


def test_counters_count_rows_passes_and_queue(scheduler: Scheduler, model: FakeModel) -> None:
    mine, theirs = Counters(1), Counters(1)
    model.gate = threading.Event()
    a = scheduler.submit(_job(_lane(model), [1, 2, 3], [2, 2, 2], counters=mine))
    assert model.started.wait(5)
    b = scheduler.submit(_job(_lane(model), [4, 5], [2, 2], counters=theirs))
    c = scheduler.submit(_job(_lane(model), [6], [2], counters=mine))
    assert scheduler.counters.snapshot()[2] == 6  # all rows queued or running
    model.gate.set()
    for job in (a, b, c):
        job.result()
    assert mine.snapshot() == ((4,), 2, 0) and theirs.snapshot() == ((2,), 1, 0)  # a pass counts once per embedder
    assert scheduler.counters.snapshot() == ((6,), 2, 0)


def test_workers_leave_when_idle_and_come_back(monkeypatch: pytest.MonkeyPatch, model: FakeModel) -> None:
    import bge_icl.workers

    monkeypatch.setattr(bge_icl.workers, "IDLE_SECONDS", 0.05)
    scheduler = Scheduler([_loaded()])
    _check(scheduler.submit(_job(_lane(model), [1], [2])), [1])
    deadline = time.monotonic() + 5
    while any(t.name == scheduler.worker_name(0) and t.is_alive() for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the idle worker did not leave"
        time.sleep(0.01)
    _check(scheduler.submit(_job(_lane(model), [2], [2])), [2])


def test_an_unexpected_error_in_the_worker_fails_the_waiting_calls(model: FakeModel) -> None:
    scheduler = Scheduler([_loaded()])
    broken = Lane(("whole",), 0, lambda longest, prefix_tokens: 1 // 0, model.forward)  # the cost model itself fails
    with pytest.raises(ZeroDivisionError):
        scheduler.submit(_job(broken, [1], [2])).result()
    _check(scheduler.submit(_job(_lane(model), [2], [2])), [2])  # a new worker serves the next call


def test_a_finished_call_leaves_nothing_of_its_embedder_to_the_worker(scheduler: Scheduler) -> None:
    import gc
    import weakref

    class Owner:  # stands for an embedder: its lanes and head close over it, and it holds the weights
        def forward(self, replica: int, loaded: LoadedModel, ids: list[Sequence[int]]) -> torch.Tensor:
            return torch.zeros(len(ids), H)

    owner = Owner()
    alive = weakref.ref(owner)
    job = scheduler.submit(_job(Lane(("whole",), 0, copied_prefix_cost, owner.forward), [1], [2]))
    job.result()  # the caller wakes: the worker must hold nothing of the pass by now
    del owner
    gc.collect()
    assert alive() is None
