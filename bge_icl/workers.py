"""The worker threads of a scheduler: one per replica, started on demand, gone after :data:`IDLE_SECONDS` idle,
stopped at interpreter exit, forgotten in a forked child.

A worker only runs its source's passes (:class:`PassSource`): it asks for the next pass under the source's
condition, runs it outside, and resolves the jobs it finished once it holds nothing of the pass. While it waits it
holds only a weak reference to its source, so the weights can be freed once no embedder uses them.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Protocol

from bge_icl.job import Job
from bge_icl.scheduling import Pass

Finished = tuple[Job, BaseException | None]
"""A job whose last rows ran (None) or that failed (its error)."""
IDLE_SECONDS = 2.0
"""A worker with no work for this long exits (and releases its references to the weights)."""


class PassSource(Protocol):
    """What a worker needs of its scheduler."""

    workers: Workers

    def next_pass(self) -> Pass | None:
        """The next pass, its rows taken; None when no call has rows waiting. Called under ``workers.cond``."""
        ...

    def run_pass(self, replica: int, step: Pass) -> Sequence[Finished]:
        """Run ``step`` on ``replica``; returns the jobs it finished (with their error, if they failed), to resolve
        once the pass is let go."""
        ...

    def abort(self, error: BaseException) -> bool:
        """Fail every queued call with ``error`` (a worker's unexpected error); True if there was one."""
        ...

    def reset(self) -> None:
        """Forget every call and worker (in a forked child)."""
        ...


class Workers:
    """The threads of one :class:`PassSource`, one slot per replica, and the condition they wait on.

    Args:
        replicas: How many replicas (so, threads at most).
        name: The threads' name prefix.
    """

    def __init__(self, replicas: int, name: str) -> None:
        self.cond = threading.Condition()
        self.name = name
        self._threads: list[threading.Thread | None] = [None] * replicas

    def thread_name(self, replica: int) -> str:
        """The name of ``replica``'s worker thread (while it runs)."""
        return f"{self.name}-{replica}"

    def start(self, source: PassSource) -> None:
        """Start a worker for each replica that has none; call under :attr:`cond`."""
        for replica, thread in enumerate(self._threads):
            if thread is None:
                thread = threading.Thread(target=_work, args=(weakref.ref(source), self.cond, replica), daemon=True,
                                          name=self.thread_name(replica))  # fmt: skip
                self._threads[replica] = thread
                thread.start()

    def left(self, replica: int) -> None:
        """``replica``'s worker has exited (idle, or on an error); call under :attr:`cond`."""
        self._threads[replica] = None

    def stop(self) -> None:
        """Wake every worker (at exit they leave at once) and wait a little for them."""
        with self.cond:
            self.cond.notify_all()
            running = [t for t in self._threads if t is not None]
        for thread in running:
            thread.join(timeout=5)


def _work(ref: weakref.ReferenceType[PassSource], cond: threading.Condition, replica: int) -> None:
    """A replica's worker: runs passes while calls have rows waiting, leaves after :data:`IDLE_SECONDS` idle."""
    try:
        _serve(ref, cond, replica)
    except BaseException as error:  # a bug here must not leave callers waiting forever: their calls fail with it
        source = ref()
        if source is not None:
            with cond:
                source.workers.left(replica)
        if source is None or not source.abort(error):
            raise  # no call to tell: the thread's own report


def _serve(ref: weakref.ReferenceType[PassSource], cond: threading.Condition, replica: int) -> None:
    idle_since = time.perf_counter()
    while True:
        with cond:
            source = ref()
            step = None if source is None else source.next_pass()
            if step is None:
                if source is None or _EXITING or time.perf_counter() - idle_since >= IDLE_SECONDS:
                    if source is not None:
                        source.workers.left(replica)
                    return
                del source  # no strong reference while waiting
                cond.wait(IDLE_SECONDS)
                continue
        assert source is not None  # a pass was cut, so the source was there
        finished = source.run_pass(replica, step)
        del source, step  # before the callers wake: they may drop the last reference to the weights
        for job, error in finished:
            job.finish(error)
        del finished
        idle_since = time.perf_counter()


_SOURCES: weakref.WeakSet[PassSource] = weakref.WeakSet()
_EXITING = False


def track(source: PassSource) -> None:
    """Stop ``source``'s workers at interpreter exit, and reset it in a forked child."""
    _SOURCES.add(source)


def _stop_all() -> None:
    """At interpreter exit: idle workers leave now (a thread still waiting while Python finalizes aborts it)."""
    global _EXITING
    _EXITING = True
    for source in list(_SOURCES):
        source.workers.stop()


def _after_fork_in_child() -> None:  # a forked child has none of the parent's worker threads: start afresh
    for source in list(_SOURCES):
        source.reset()


atexit.register(_stop_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
