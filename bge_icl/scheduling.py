"""The scheduling policy: who goes next and how a pass is cut, as pure functions of the waiting jobs.

No threads, no locks, no clock of its own (``now`` is an argument): :mod:`bge_icl.scheduler` calls these under its
lock, and the tests call them on plain jobs.

- **Fair.** The waiting call with the least work left goes first (:func:`priority`), so a one-query call
  submitted while a corpus call runs waits for the pass that is running, then goes. A call passed over
  :data:`STARVATION_PASSES` times in a row goes first, so a stream of small calls cannot starve a big one.
- **Bounded passes.** A pass holds the first call's lane, then other calls' rows in that lane, longest first,
  at most the token budget (``max_batch_tokens``, counting what each row costs) and the row limit
  (:func:`cut`). The cut depends on the rows only, never on timing: a call alone gets the same passes every time.
- **No added wait.** A pass starts at once unless ``batch_wait_ms`` > 0 and it fills less than half its budget
  and row limit; then it waits that long from its oldest call's arrival for more rows (:func:`wait_before`).
- **Backoff.** After ``torch.OutOfMemoryError`` the calls of the pass keep half its cost as their budget
  (:func:`halved_budget`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bge_icl.job import Job, Lane

STARVATION_PASSES = 8
"""A call passed over this many times in a row goes first."""


@dataclass
class Pass:
    """A forward pass cut from the waiting calls.

    Attributes:
        lane: The lane all its rows run in.
        entries: Each call's rows in the pass, in the order they run.
        cost: Its cost in tokens (rows x the cost of its longest row).
        bound: The most cost it could have held (the tightest budget of its calls).
        row_limit: The most rows it could have held (None: no limit).
    """

    lane: Lane
    entries: list[tuple[Job, list[int]]]
    cost: int
    bound: int
    row_limit: int | None

    @property
    def rows(self) -> int:
        """How many rows it holds."""
        return sum(len(rows) for _, rows in self.entries)

    @property
    def full(self) -> bool:
        """Over half its budget or its row limit: worth running without waiting for more rows."""
        return self.cost * 2 > self.bound or (self.row_limit is not None and self.rows * 2 > self.row_limit)


def priority(job: Job) -> tuple[int, int, int]:
    """The sort key of a waiting job: starving jobs first, then the least work left, then the oldest."""
    starving = job.passed_over >= STARVATION_PASSES
    return (0 if starving else 1, 0 if starving else job.cost_left, job.order)


def cut(waiting: Sequence[Job]) -> Pass:
    """The pass ``waiting`` (jobs with rows pending) make next, taking nothing: the first job's lane, then the
    others' rows in it, each job's longest first, under the tightest budget and row limit of the jobs it holds."""
    ranked = sorted(waiting, key=priority)
    first = ranked[0]
    lane = first.lanes[next(iter(first.pending))]
    budget, row_limit = first.budget, first.row_limit
    entries: list[tuple[Job, list[int]]] = []
    longest, count = 0, 0
    for job in ranked:
        queue = job.pending.get(lane.key)
        if not queue or (job is not first and (job.alone or first.alone)):
            continue
        budget = min(budget, job.budget)
        row_limit = job.row_limit if row_limit is None else min(row_limit, job.row_limit or row_limit)
        taken: list[int] = []
        for row, length in queue:
            cost = (count + 1) * lane.row_cost(max(longest, length, 1), lane.prefix_tokens)
            if count and (cost > budget or (row_limit is not None and count + 1 > row_limit)):
                break
            taken.append(row)
            longest, count = max(longest, length, 1), count + 1
        if taken:
            entries.append((job, taken))
        if row_limit is not None and count >= row_limit:
            break
    return Pass(lane, entries, count * lane.row_cost(longest, lane.prefix_tokens), budget, row_limit)


def wait_before(step: Pass, now: float) -> float:
    """Seconds to wait for more rows before running ``step`` (0: run it now)."""
    wait = max(job.batch_wait_s for job, _ in step.entries)
    if wait <= 0 or step.full:
        return 0.0
    age = now - min(job.submitted for job, _ in step.entries)
    return max(0.0, wait - age)


def take(step: Pass, waiting: Sequence[Job]) -> None:
    """Hand ``step``'s rows to the pass: out of their queues; the jobs left out count one more pass over."""
    chosen = {id(job) for job, _ in step.entries}
    for job in waiting:
        if id(job) not in chosen:
            job.passed_over += 1
    for job, rows in step.entries:
        job.passed_over = 0
        job.take(step.lane.key, len(rows))


def halved_budget(step: Pass, job: Job) -> int:
    """``job``'s budget after ``step`` ran out of memory: at most half the pass's cost (at least 1)."""
    return min(job.budget, max(1, step.cost // 2))
