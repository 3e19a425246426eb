"""The scheduler: every call on one set of loaded weights shares its forward passes (dynamic batching).

Infinity's ``batch_handler.py`` is the model: calls put their prepared rows in one queue and wait for their own
rows only (a :class:`~bge_icl.job.Job` carries a ``concurrent.futures.Future``); one worker thread per replica
(:mod:`bge_icl.workers`) runs passes cut from whatever is waiting, from every call, by the scheduling policy
(:mod:`bge_icl.scheduling`: who goes next, how a pass is cut, pure functions of the queue). There is one
:class:`Scheduler` per set of replicas, shared by every embedder on those weights (``with_options`` /
``with_examples`` copies, both adapters, the server's example sets), so their rows can share passes and no call
can starve another at the model's lock.

- **Lanes.** Rows share a pass only when they run the same forward: all whole prompts (passages, and queries that
  do not continue a cached prefix) share one lane; the queries of one cached prefix share another
  (:class:`~bge_icl.job.Lane`).
- **Isolated.** A failed pass that held several calls' rows is run again call by call, so only the failing call
  fails. ``torch.OutOfMemoryError`` (and only that) halves the budget of the calls in the pass and puts their rows
  back; a single row that still does not fit fails its call with advice. A cancelled call's rows that have not
  run are dropped.
- **Admission.** :meth:`Scheduler.is_overloaded` answers whether more rows would pass a limit of queued rows
  (a server's 503), from the one count of rows in flight.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from bge_icl import scheduling
from bge_icl.counters import Counters
from bge_icl.job import Job, Lane, Rows
from bge_icl.loading import LoadedModel
from bge_icl.scheduling import STARVATION_PASSES, Pass
from bge_icl.workers import Finished, Workers, track

__all__ = ["STARVATION_PASSES", "Counters", "Job", "Lane", "Rows", "Scheduler", "scheduler_for"]


class Scheduler:
    """The queue and workers that serve every call on one set of replicas.

    Args:
        replicas: The loaded models, one per ``devices`` entry.
    """

    def __init__(self, replicas: Sequence[LoadedModel]) -> None:
        self.replicas: tuple[LoadedModel, ...] = tuple(replicas)
        self.reset()
        track(self)

    def reset(self) -> None:
        """Forget every call and worker (a forked child has none of its parent's threads)."""
        self.workers = Workers(len(self.replicas), f"bge-icl-replica@{id(self):x}")
        self.counters = Counters(len(self.replicas))
        self._jobs: list[Job] = []

    def worker_name(self, replica: int) -> str:
        """The name of ``replica``'s worker thread (while it runs)."""
        return self.workers.thread_name(replica)

    # -- calls -------------------------------------------------------------------------------------

    def is_overloaded(self, rows: int, limit: int) -> bool:
        """Whether ``rows`` more would pass ``limit`` queued rows (rows of calls in flight not embedded yet); an idle
        scheduler takes any call."""
        queued = self.counters.queued_rows
        return queued > 0 and queued + rows > limit

    def submit(self, job: Job) -> Job:
        """Queue ``job``; the workers start on it at once. Returns it, to wait on (``job.future``)."""
        if job.total == 0:
            job.finish()
            return job
        self._count(job, queued=job.total)
        with self.workers.cond:
            self._jobs.append(job)
            self.workers.start(self)
            self.workers.cond.notify_all()
        return job

    def cancel(self, job: Job) -> None:
        """Drop ``job``'s rows that have not run; a pass running its rows finishes, and they are discarded."""
        with self.workers.cond:
            if not job.live:
                return
            job.cancelled = True
            job.pending.clear()
            if job in self._jobs:
                self._jobs.remove(job)
            self._count(job, queued=-job.left)
        job.finish()

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
        self.submit(job)
        try:
            return await asyncio.wrap_future(job.future)
        except BaseException:
            self.cancel(job)
            raise

    # -- what the workers call (workers.PassSource) ----------------------------------------------------

    def next_pass(self) -> Pass | None:
        """The next pass, its rows taken, or None when no call has rows waiting; call under ``workers.cond``."""
        while True:
            waiting = [job for job in self._jobs if job.pending]
            if not waiting:
                return None
            step = scheduling.cut(waiting)
            wait = scheduling.wait_before(step, time.perf_counter())
            if wait <= 0:
                scheduling.take(step, waiting)
                return step
            self.workers.cond.wait(wait)  # more rows may come: cut again after at most batch_wait_ms

    def run_pass(self, replica: int, step: Pass) -> list[Finished]:
        """Run ``step`` on ``replica``; on failure, retry per call or back off (see the module doc).

        Returns:
            The jobs it finished (done, or failed with their error), for the worker to resolve once it holds no more
            of the pass.
        """
        loaded = self.replicas[replica]
        ids = [job.ids[row] for job, rows in step.entries for row in rows]
        try:
            with loaded.lock:
                pooled = step.lane.forward(replica, loaded, ids)  # (B, H)
                parts, offset = [], 0
                for job, rows in step.entries:
                    parts.append(job.head(pooled[offset : offset + len(rows)]))  # (b, D)
                    offset += len(rows)
        except Exception as error:  # noqa: BLE001 - any failure of a pass goes to the calls it holds
            with self.workers.cond:
                finished = self._failed(step, error, loaded)
                self.workers.cond.notify_all()
            return finished
        with self.workers.cond:
            finished = self._deliver(replica, step, parts)
            self.workers.cond.notify_all()
        return finished

    def abort(self, error: BaseException) -> bool:
        """A worker stopped on an unexpected error: every queued call fails with it (True if any)."""
        with self.workers.cond:
            failed = list(self._jobs)
            for job in failed:
                job.pending.clear()
                self._count(job, queued=-job.left)
            self._jobs.clear()
        for job in failed:
            job.finish(error)
        return bool(failed)

    # -- bookkeeping, under workers.cond ------------------------------------------------------------------

    def _count(self, job: Job, replica: int | None = None, rows: int = 0, passes: int = 0, queued: int = 0) -> None:
        self.counters.add(replica, rows, passes, queued)
        if job.counters is not None:
            job.counters.add(replica, rows, passes, queued)

    def _deliver(self, replica: int, step: Pass, parts: list[torch.Tensor]) -> list[Finished]:
        finished: list[Finished] = []
        self.counters.add(passes=1)
        counted: set[int] = set()  # an embedder counts a pass once, however many of its calls it held
        for (job, rows), vectors in zip(step.entries, parts, strict=True):
            if not job.live:
                continue
            self.counters.add(replica, len(rows), queued=-len(rows))
            if job.counters is not None:
                first = id(job.counters) not in counted
                counted.add(id(job.counters))
                job.counters.add(replica, len(rows), 1 if first else 0, -len(rows))
            if job.deliver(rows, vectors):
                self._jobs.remove(job)
                finished.append((job, None))
        return finished

    def _failed(self, step: Pass, error: Exception, loaded: LoadedModel) -> list[Finished]:
        """Handle a pass that raised. Returns the jobs that have now failed, with their error."""
        live = [(job, rows) for job, rows in step.entries if job.live]
        out_of_memory = isinstance(error, torch.OutOfMemoryError)
        if out_of_memory and step.rows > 1:
            for job, rows in live:
                job.budget = scheduling.halved_budget(step, job)  # kept for the rest of the call
                job.give_back(step.lane, rows)
            _empty_cache(loaded)
            return []
        if len(live) > 1:  # several calls shared the pass: run each alone, so only the failing one fails
            for job, rows in live:
                job.alone = True
                job.give_back(step.lane, rows)
            return []
        failed: list[Finished] = []
        for job, rows in live:
            reason = _single_row_out_of_memory(error, loaded, len(job.ids[rows[0]])) if out_of_memory else error
            job.pending.clear()
            self._jobs.remove(job)
            self._count(job, queued=-job.left)
            failed.append((job, reason))
        return failed


def _empty_cache(loaded: LoadedModel) -> None:
    if loaded.device.type == "cuda":
        with torch.cuda.device(loaded.device):
            torch.cuda.empty_cache()


def _single_row_out_of_memory(error: Exception, loaded: LoadedModel, tokens: int) -> Exception:
    """The error of a call whose single row does not fit, with advice; caused by ``error``."""
    msg = (
        f"out of memory on {loaded.device} ({loaded.dtype}) for a single sequence of {tokens} tokens; "
        "lower query_max_length/passage_max_length, use dtype='float16', or use a device with more memory"
    )
    new = torch.OutOfMemoryError(msg)
    new.__cause__ = error
    return new


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
