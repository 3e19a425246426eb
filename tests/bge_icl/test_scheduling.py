"""The scheduling policy as pure functions of the waiting jobs: no threads, no workers, no clock."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bge_icl.batching import copied_prefix_cost
from bge_icl.job import Job, Lane, Rows
from bge_icl.loading import LoadedModel
from bge_icl.scheduler import Scheduler
from bge_icl.scheduling import STARVATION_PASSES, cut, halved_budget, take, wait_before


def _never(replica: int, loaded: LoadedModel, ids: list[Sequence[int]]) -> torch.Tensor:
    raise AssertionError("the policy runs no forward pass")


WHOLE = Lane(("whole",), 0, copied_prefix_cost, _never)
OTHER = Lane(("other",), 0, copied_prefix_cost, _never)


def _job(lengths: Sequence[int], *, lane: Lane = WHOLE, budget: int = 1000, rows: int | None = None,
         wait: float = 0.0) -> Job:  # fmt: skip
    ids = [[7] * n for n in lengths]
    return Job(ids, [Rows(lane, range(len(ids)), list(lengths))], lambda t: t, 1, budget, rows, wait)


def _rows(step_entries: list[tuple[Job, list[int]]]) -> list[tuple[int, list[int]]]:
    return [(job.order, rows) for job, rows in step_entries]


def test_a_pass_takes_the_longest_rows_first_under_the_budget() -> None:
    job = _job([2, 9, 4, 9, 1], budget=26)  # padded cost: rows x longest
    step = cut([job])
    assert step.entries == [(job, [1, 3])] and step.cost == 18  # a third row would cost 3 x 9 = 27
    assert cut([_job([2, 9, 4, 9, 1], budget=27)]).entries[0][1] == [1, 3, 2]
    assert cut([_job([2, 9, 4, 9, 1], budget=10_000, rows=2)]).entries[0][1] == [1, 3]


def test_the_call_with_least_work_goes_first_and_fills_the_pass_with_others() -> None:
    big, small = _job([8] * 10, budget=40), _job([8], budget=40)
    step = cut([big, small])
    assert step.entries[0] == (small, [0])  # least work left first
    assert step.entries[1] == (big, [0, 1, 2, 3])  # then the others' rows in the same lane, under the budget


def test_a_starving_call_goes_first_and_take_counts_the_passes_over() -> None:
    big, small = _job([8] * 10, budget=8), _job([8], budget=8)
    for _ in range(STARVATION_PASSES):
        step = cut([big, small])
        assert step.entries[0][0] is small
        take(step, [big, small])
        small.give_back(WHOLE, step.entries[0][1])  # the small call keeps coming back
    assert big.passed_over == STARVATION_PASSES
    assert cut([big, small]).entries[0][0] is big


def test_rows_of_other_lanes_and_of_calls_run_alone_stay_out() -> None:
    a, b, c = _job([4]), _job([4, 4], lane=OTHER), _job([4, 4])
    c.alone = True
    assert _rows(cut([a, b, c]).entries) == [(a.order, [0])]


def test_batch_wait_only_before_a_pass_under_half_its_budget_and_row_limit() -> None:
    lone = _job([4], budget=100, wait=0.5)
    assert abs(wait_before(cut([lone]), now=lone.submitted + 0.1) - 0.4) < 1e-9
    assert wait_before(cut([lone]), now=lone.submitted + 0.6) == 0.0
    assert wait_before(cut([_job([4] * 13, budget=100, wait=0.5)]), now=0.0) == 0.0  # 52 > half of 100
    assert wait_before(cut([_job([4], budget=100)]), now=0.0) == 0.0  # no wait asked


def test_out_of_memory_halves_the_budget_of_the_calls_in_the_pass() -> None:
    job = _job([10] * 4, budget=40)
    step = cut([job])
    assert step.cost == 40 and halved_budget(step, job) == 20


def test_is_overloaded_counts_the_queued_rows_and_an_idle_scheduler_takes_anything() -> None:
    loaded = LoadedModel(None, None, torch.device("cpu"), torch.float32, "sdpa", ("fake",))  # type: ignore[arg-type]
    scheduler = Scheduler([loaded])
    assert not scheduler.is_overloaded(10_000, limit=10)
    scheduler.counters.add(queued=8)
    assert not scheduler.is_overloaded(2, limit=10)
    assert scheduler.is_overloaded(3, limit=10)
