"""The scheduler: every call on one set of loaded weights shares its forward passes (dynamic batching).

Infinity's ``batch_handler.py`` is the model: calls put their prepared rows in one queue and wait for their own
rows only; one worker thread per replica cuts forward passes from whatever is waiting, from every call, up to the
token budget and the row limit. There is one :class:`Scheduler` per set of replicas, shared by every embedder on
those weights (``with_options`` / ``with_examples`` copies, both adapters, the server's example sets), so their rows
can share passes and no call can starve another at the model's lock.

- **Lanes.** Rows share a pass only when they run the same forward: all whole prompts (passages, and queries that
  do not continue a cached prefix) share one lane; the queries of one cached prefix share another
  (:class:`Lane`).
- **Fair.** Between passes the worker serves the waiting call with the least work left first, so a one-query
  call submitted while a corpus call runs waits for the pass that is running, then goes. A call that was passed
  over :data:`STARVATION_PASSES` times in a row goes first, so a stream of small calls cannot starve a big one.
- **Bounded passes.** As vLLM's ``max_num_batched_tokens`` bounds a step, a pass holds at most the token budget
  (``max_batch_tokens``, counting what each row costs), so nothing waits long behind one. The cut depends on the
  rows only, never on timing: a call alone gets the same passes, and the same vectors, every time.
- **No added wait.** An idle worker starts a pass as soon as a row arrives; ``batch_wait_ms`` > 0 lets it wait
  that long for more rows when the pass would fill less than half its budget and row limit.
- **Isolated.** A failed pass that held several calls' rows is run again call by call, so only the failing call
  fails. ``torch.OutOfMemoryError`` (and only that) halves the budget of the calls in the pass and puts their rows
  back; a single row that still does not fit fails its call with advice. A cancelled call's rows that have not
  run are dropped.

The workers exit after :data:`IDLE_SECONDS` without work (they hold the weights while they run) and start again
on the next call.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bge_icl.batching import RowCost
from bge_icl.loading import LoadedModel

STARVATION_PASSES = 8
"""A call passed over this many times in a row goes first."""
IDLE_SECONDS = 2.0
"""A worker with no work for this long exits (and releases its references to the weights)."""


@dataclass(frozen=True)
class Lane:
    """Rows that can share a forward pass.

    Attributes:
        key: Equal keys, same forward: ``("whole",)`` for whole prompts; the cached prefix's identity and the
            forward path for cached queries.
        skip: Cached prefix tokens every row attends to (0 for whole prompts).
        row_cost: The cost of one row, in tokens (:mod:`bge_icl.batching`).
        forward: ``(replica index, its loaded model, token-id lists) -> (B, H)`` pooled last-token states.
    """

    key: Hashable
    skip: int
    row_cost: RowCost
    forward: Callable[[int, LoadedModel, list[Sequence[int]]], torch.Tensor]


class Counters:
    """Work counted for one embedder, or for a whole scheduler: rows per replica, passes, rows not embedded yet.

    Args:
        replicas: How many replicas the rows are counted for.
    """

    def __init__(self, replicas: int) -> None:
        self._lock = threading.Lock()
        self._rows, self._passes, self._queued = [0] * replicas, 0, 0

    def snapshot(self) -> tuple[tuple[int, ...], int, int]:
        """(rows embedded per replica, forward passes that ran some of them, rows queued or running)."""
        with self._lock:
            return tuple(self._rows), self._passes, self._queued

    def _add(self, replica: int | None, rows: int, passes: int, queued: int) -> None:
        with self._lock:
            if replica is not None:
                self._rows[replica] += rows
            self._passes += passes
            self._queued += queued


@dataclass(frozen=True)
class Rows:
    """One lane's rows of a call: input indices and the tokens each runs (after any cached prefix)."""

    lane: Lane
    rows: Sequence[int]
    lengths: Sequence[int]


class Job:
    """One call in the scheduler: its rows, per lane, longest first, and where its vectors go.

    Args:
        ids: The call's token-id lists (indexed by the rows of ``groups``).
        groups: Its rows per lane.
        head: ``(B, H)`` pooled states -> ``(B, D)`` float32 vectors (cut, normalize), on the device.
        dimension: D.
        budget: Most tokens of cost per pass (``max_batch_tokens``).
        row_limit: Most rows per pass (None: the budget decides).
        batch_wait_s: How long a worker may wait for more rows before a pass under half its budget and row limit.
        progress: Called with the number of rows done, after each pass (a progress bar).
        counters: Where the job's work is counted besides the scheduler's own (its embedder's).
    """

    _order = itertools.count()

    def __init__(
        self, ids: Sequence[Sequence[int]], groups: Sequence[Rows], head: Callable[[torch.Tensor], torch.Tensor],
        dimension: int, budget: int, row_limit: int | None, batch_wait_s: float = 0.0,
        progress: Callable[[int], object] | None = None, counters: Counters | None = None,
    ) -> None:  # fmt: skip
        self.ids, self.head, self.dimension, self.counters = ids, head, dimension, counters
        self.budget, self.row_limit, self.batch_wait_s = budget, row_limit, batch_wait_s
        self.progress = progress
        self.lanes: dict[Hashable, Lane] = {}
        self.pending: dict[Hashable, deque[tuple[int, int]]] = {}
        for group in groups:
            order = np.argsort(-np.asarray(group.lengths, dtype=np.int64), kind="stable")  # longest first
            queue = self.pending.setdefault(group.lane.key, deque())
            queue.extend((int(group.rows[i]), int(group.lengths[i])) for i in order)
            self.lanes[group.lane.key] = group.lane
        self.pending = {key: rows for key, rows in self.pending.items() if rows}
        self.total = sum(len(rows) for rows in self.pending.values())
        self.left = self.total  # rows not delivered yet
        self.cost_left = sum(length for rows in self.pending.values() for _, length in rows)
        self.order = next(Job._order)
        self.submitted = time.perf_counter()
        self.passed_over = 0
        self.alone = False  # True after a shared pass with it failed: its rows run in passes of their own
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.cancelled = False
        self.vectors: np.ndarray | None = None
        self._parts: list[tuple[list[int], torch.Tensor]] = []
        self._callbacks: list[Callable[[], object]] = []

    @property
    def queued(self) -> int:
        """Rows not handed to a pass yet."""
        return sum(len(rows) for rows in self.pending.values())

    def on_done(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` (from the worker thread) once the job has finished, failed or been cancelled."""
        self._callbacks.append(callback)
        if self.done.is_set():
            callback()

    def _finish(self) -> None:
        if self.error is None and not self.cancelled:
            out = np.empty((self.total, self.dimension), dtype=np.float32)  # (N, D)
            for rows, vectors in self._parts:
                out[rows] = vectors.cpu().numpy()  # (B, D): the copy to the host, once per pass, at the end
            self.vectors = out
        # A done job holds nothing of its embedder (lanes and head close over it): a worker that still holds the
        # job keeps no weights alive once the caller lets them go.
        self._parts, self.lanes, self.pending, self.counters, self.progress = [], {}, {}, None, None
        self.head = _finished_head
        self.done.set()
        for callback in self._callbacks:
            callback()

    def result(self) -> np.ndarray:
        """The vectors (N, D) in input order, once done; the error of a failed job is raised."""
        self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.vectors is not None, "result() of a cancelled job"
        return self.vectors


def _finished_head(pooled: torch.Tensor) -> torch.Tensor:
    """The head of a job that is done (cancelled while a pass held its rows): that pass's rows are discarded."""
    return pooled.float()


@dataclass
class _Pass:
    replica: int
    lane: Lane
    entries: list[tuple[Job, list[int]]]  # each job's rows in this pass
    cost: int
    bound: int  # most tokens of cost it could have held
    row_limit: int | None

    @property
    def rows(self) -> int:
        return sum(len(rows) for _, rows in self.entries)


class Scheduler:
    """The queue and workers that serve every call on one set of replicas.

    Args:
        replicas: The loaded models, one per ``devices`` entry.
    """

    def __init__(self, replicas: Sequence[LoadedModel]) -> None:
        self.replicas: tuple[LoadedModel, ...] = tuple(replicas)
        self._reset()
        _SCHEDULERS.add(self)

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._jobs: list[Job] = []
        self._workers: list[threading.Thread | None] = [None] * len(self.replicas)
        self.counters = Counters(len(self.replicas))

    def worker_name(self, replica: int) -> str:
        """The name of ``replica``'s worker thread (while it runs)."""
        return f"bge-icl-replica-{replica}@{id(self):x}"

    # -- calls -------------------------------------------------------------------------------------

    def submit(self, job: Job) -> Job:
        """Queue ``job``; the workers start on it at once. Returns it, to wait on (:meth:`Job.result`)."""
        if job.total == 0:
            job._finish()
            return job
        self._count(job, None, 0, 0, job.total)
        with self._cond:
            self._jobs.append(job)
            for replica, worker in enumerate(self._workers):
                if worker is None:
                    worker = threading.Thread(target=_work, args=(weakref.ref(self), self._cond, replica),
                                              daemon=True, name=self.worker_name(replica))  # fmt: skip
                    self._workers[replica] = worker
                    worker.start()
            self._cond.notify_all()
        return job

    def cancel(self, job: Job) -> None:
        """Drop ``job``'s rows that have not run; a pass running its rows finishes, and they are discarded."""
        with self._cond:
            if job.done.is_set():
                return
            job.cancelled = True
            job.pending.clear()
            if job in self._jobs:
                self._jobs.remove(job)
            self._count(job, None, 0, 0, -job.left)
        job._finish()

    def run(self, job: Job) -> np.ndarray:
        """Submit ``job`` and wait for its vectors; an interrupt while waiting cancels it."""
        self.submit(job)
        try:
            return job.result()
        except BaseException:
            self.cancel(job)  # Ctrl-C (or any error) while waiting: its rows that have not run are dropped
            raise

    async def arun(self, job: Job) -> np.ndarray:
        """:meth:`run` for asyncio: waits without blocking the event loop; cancelling the awaiting task cancels
        ``job``."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def resolve() -> None:
            if not done.done():
                done.set_result(None)

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop may have closed meanwhile
                loop.call_soon_threadsafe(resolve)

        job.on_done(wake)
        self.submit(job)
        try:
            await done
        except BaseException:
            self.cancel(job)
            raise
        return job.result()

    # -- the workers ---------------------------------------------------------------------------------

    def _next_pass(self, replica: int) -> _Pass | None:
        """The next pass for ``replica``, or None when no call has rows waiting; call under the lock."""
        while True:
            waiting = [job for job in self._jobs if job.pending]
            if not waiting:
                return None
            step = self._cut(replica, waiting)
            wait = max(job.batch_wait_s for job, _ in step.entries)
            full = step.cost * 2 > step.bound or (step.row_limit is not None and step.rows * 2 > step.row_limit)
            age = time.perf_counter() - min(job.submitted for job, _ in step.entries)
            if wait <= 0 or full or age >= wait:
                self._take(step)
                return step
            self._cond.wait(wait - age)  # more rows may come: cut again after at most batch_wait_ms

    def _priority(self, job: Job) -> tuple[int, int, int]:
        starving = job.passed_over >= STARVATION_PASSES
        return (0 if starving else 1, 0 if starving else job.cost_left, job.order)

    def _cut(self, replica: int, waiting: list[Job]) -> _Pass:
        """The pass the waiting jobs make next (nothing taken yet): the first job's lane, then others' rows in it."""
        ranked = sorted(waiting, key=self._priority)
        head = ranked[0]
        lane = head.lanes[next(iter(head.pending))]
        budget, row_limit = head.budget, head.row_limit
        entries: list[tuple[Job, list[int]]] = []
        longest, count = 0, 0
        for job in ranked:
            rows = job.pending.get(lane.key)
            if not rows or (job is not head and (job.alone or head.alone)):
                continue
            budget = min(budget, job.budget)
            row_limit = job.row_limit if row_limit is None else min(row_limit, job.row_limit or row_limit)
            taken: list[int] = []
            for row, length in rows:
                cost = (count + 1) * lane.row_cost(max(longest, length, 1), lane.skip)
                if count and (cost > budget or (row_limit is not None and count + 1 > row_limit)):
                    break
                taken.append(row)
                longest, count = max(longest, length, 1), count + 1
            if taken:
                entries.append((job, taken))
            if row_limit is not None and count >= row_limit:
                break
        return _Pass(replica, lane, entries, count * lane.row_cost(longest, lane.skip), budget, row_limit)

    def _take(self, step: _Pass) -> None:
        """Remove ``step``'s rows from their queues; call under the lock."""
        chosen = {id(job) for job, _ in step.entries}
        for job in self._jobs:
            if job.pending and id(job) not in chosen:
                job.passed_over += 1
        for job, rows in step.entries:
            job.passed_over = 0
            queue = job.pending[step.lane.key]
            for _ in rows:
                _, length = queue.popleft()
                job.cost_left -= length
            if not queue:
                del job.pending[step.lane.key]

    def _give_back(self, step: _Pass, entries: list[tuple[Job, list[int]]]) -> None:
        """Put ``entries``' rows back at the front of their queues (they did not run); call under the lock."""
        for job, rows in entries:
            if job.cancelled or job.done.is_set():
                continue
            queue = job.pending.setdefault(step.lane.key, deque())
            lengths = {row: len(job.ids[row]) - step.lane.skip for row in rows}
            queue.extendleft((row, lengths[row]) for row in reversed(rows))
            job.cost_left += sum(lengths.values())

    def _run(self, step: _Pass) -> list[Job]:
        """Run ``step`` on its replica; on failure, retry per job or back off (see the module doc).

        Returns:
            The jobs it finished (done or failed), for the worker to signal once it holds no more of the pass.
        """
        loaded = self.replicas[step.replica]
        ids = [job.ids[row] for job, rows in step.entries for row in rows]
        error: BaseException | None = None
        try:
            with loaded.lock:
                pooled = step.lane.forward(step.replica, loaded, ids)  # (B, H)
                parts, offset = [], 0
                for job, rows in step.entries:
                    parts.append(job.head(pooled[offset : offset + len(rows)]))  # (b, D)
                    offset += len(rows)
        except torch.OutOfMemoryError as e:
            error = e
        except Exception as e:  # noqa: BLE001 - any failure of a pass goes to the calls it holds
            error = e
        with self._cond:
            if error is None:
                finished = self._deliver(step, parts)
            else:
                finished = self._failed(step, error, loaded)
            self._cond.notify_all()
        return finished

    def _count(self, job: Job, replica: int | None, rows: int, passes: int, queued: int) -> None:
        self.counters._add(replica, rows, passes, queued)
        if job.counters is not None:
            job.counters._add(replica, rows, passes, queued)

    def _deliver(self, step: _Pass, parts: list[torch.Tensor]) -> list[Job]:
        finished = []
        self.counters._add(None, 0, 1, 0)
        counted: set[int] = set()  # an embedder counts a pass once, however many of its calls it held
        for (job, rows), vectors in zip(step.entries, parts, strict=True):
            if job.cancelled or job.done.is_set():
                continue
            self.counters._add(step.replica, len(rows), 0, -len(rows))
            if job.counters is not None:
                first = id(job.counters) not in counted
                counted.add(id(job.counters))
                job.counters._add(step.replica, len(rows), 1 if first else 0, -len(rows))
            job._parts.append((rows, vectors))
            job.left -= len(rows)
            if job.progress is not None:
                job.progress(len(rows))
            if job.left == 0:
                self._jobs.remove(job)
                finished.append(job)
        return finished

    def _abort(self, replica: int, error: BaseException) -> bool:
        """The worker of ``replica`` stopped on an unexpected error: every queued call fails with it (True if any)."""
        with self._cond:
            self._workers[replica] = None
            failed = list(self._jobs)
            for job in failed:
                job.error = error
                job.pending.clear()
                self._count(job, None, 0, 0, -job.left)
            self._jobs.clear()
        for job in failed:
            job._finish()
        return bool(failed)

    def _failed(self, step: _Pass, error: BaseException, loaded: LoadedModel) -> list[Job]:
        """Handle a pass that raised; call under the lock. Returns the jobs that have now failed."""
        live = [(job, rows) for job, rows in step.entries if not (job.cancelled or job.done.is_set())]
        if isinstance(error, torch.OutOfMemoryError) and step.rows > 1:
            for job, _ in live:
                job.budget = min(job.budget, max(1, step.cost // 2))  # kept for the rest of the call
            self._give_back(step, live)
            if loaded.device.type == "cuda":
                with torch.cuda.device(loaded.device):
                    torch.cuda.empty_cache()
            return []
        if len(live) > 1:  # several calls shared the pass: run each alone, so only the failing one fails
            for job, _ in live:
                job.alone = True
            self._give_back(step, live)
            return []
        failed = []
        for job, rows in live:
            if isinstance(error, torch.OutOfMemoryError):
                tokens = len(job.ids[rows[0]])
                msg = (
                    f"out of memory on {loaded.device} ({loaded.dtype}) for a single sequence of {tokens} tokens; "
                    "lower query_max_length/passage_max_length, use dtype='float16', or use a device with more memory"
                )
                new: BaseException = torch.OutOfMemoryError(msg)
                new.__cause__ = error
                error = new
            job.error = error
            job.pending.clear()
            self._jobs.remove(job)
            self._count(job, None, 0, 0, -job.left)
            failed.append(job)
        return failed


def _work(ref: weakref.ReferenceType[Scheduler], cond: threading.Condition, replica: int) -> None:
    """A replica's worker: runs passes while calls have rows waiting, leaves after :data:`IDLE_SECONDS` idle.

    While it waits it holds only a weak reference to its scheduler, so the weights can be freed once no embedder
    uses them.
    """
    try:
        _serve(ref, cond, replica)
    except BaseException as error:  # a bug here must not leave callers waiting forever: their calls fail with it
        scheduler = ref()
        if scheduler is None or not scheduler._abort(replica, error):
            raise  # no call to tell: the thread's own report


def _serve(ref: weakref.ReferenceType[Scheduler], cond: threading.Condition, replica: int) -> None:
    idle_since = time.perf_counter()
    while True:
        with cond:
            scheduler = ref()
            step = None if scheduler is None else scheduler._next_pass(replica)
            if step is None:
                if scheduler is None or _EXITING or time.perf_counter() - idle_since >= IDLE_SECONDS:
                    if scheduler is not None:
                        scheduler._workers[replica] = None
                    return
                del scheduler  # no strong reference while waiting
                cond.wait(IDLE_SECONDS)
                continue
        assert scheduler is not None  # a pass was cut, so the scheduler was there
        finished = scheduler._run(step)
        del scheduler, step  # before the callers wake: they may drop the last reference to the weights
        for job in finished:
            job._finish()
        del finished
        idle_since = time.perf_counter()


_SCHEDULERS: weakref.WeakSet[Scheduler] = weakref.WeakSet()
_BY_WEIGHTS: weakref.WeakValueDictionary[tuple[Any, ...], Scheduler] = weakref.WeakValueDictionary()
_BY_WEIGHTS_LOCK = threading.Lock()


def scheduler_for(replicas: Sequence[LoadedModel]) -> Scheduler:
    """The one scheduler of these replicas (created on first use; freed when no embedder holds it)."""
    key = tuple(id(r) for r in replicas)
    with _BY_WEIGHTS_LOCK:
        found = _BY_WEIGHTS.get(key)
        if found is None or found.replicas != tuple(replicas):
            found = Scheduler(replicas)
            _BY_WEIGHTS[key] = found
        return found


_EXITING = False


def _stop_workers() -> None:
    """At interpreter exit: idle workers leave now (a thread still waiting while Python finalizes aborts it)."""
    global _EXITING
    _EXITING = True
    workers: list[threading.Thread] = []
    for scheduler in list(_SCHEDULERS):
        with scheduler._cond:
            scheduler._cond.notify_all()
            workers.extend(w for w in scheduler._workers if w is not None)
    for worker in workers:
        worker.join(timeout=5)


atexit.register(_stop_workers)


def _after_fork_in_child() -> None:  # a forked child has none of the parent's worker threads: start afresh
    for scheduler in list(_SCHEDULERS):
        scheduler._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
