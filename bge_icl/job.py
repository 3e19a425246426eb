"""One call in the scheduler: ``Lane`` (rows that can share a pass), ``Rows`` (a call's rows in one lane) and
``Job`` (the call's rows waiting, per lane, longest first, and the ``concurrent.futures.Future`` of its vectors).

A job is state only: the scheduling policy (:mod:`bge_icl.scheduling`) reads it, the scheduler
(:mod:`bge_icl.scheduler`) changes it under its lock. Callers wait on :attr:`Job.future` (``result()`` in a thread,
``asyncio.wrap_future`` in a coroutine), as Infinity's queued items carry futures.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass

import numpy as np
import torch

from bge_icl.batching import RowCost
from bge_icl.counters import Counters
from bge_icl.loading import LoadedModel

Forward = Callable[[int, LoadedModel, list[Sequence[int]]], torch.Tensor]
"""``(replica index, its loaded model, token-id lists) -> (B, H)`` pooled last-token states."""
Head = Callable[[torch.Tensor], torch.Tensor]
"""``(B, H)`` pooled states -> ``(B, D)`` float32 vectors (cut, normalize), on the device."""


@dataclass(frozen=True)
class Lane:
    """Rows that can share a forward pass.

    Attributes:
        key: Equal keys, same forward: ``("whole",)`` for whole prompts; the cached prefix and the forward path
            for cached queries.
        prefix_tokens: Prefix tokens every row attends to, from the prefix KV (0 for whole prompts).
        row_cost: The cost of one row, in tokens (:mod:`bge_icl.batching`).
        forward: Runs a pass of this lane's rows (:data:`Forward`).
    """

    key: Hashable
    prefix_tokens: int
    row_cost: RowCost
    forward: Forward


@dataclass(frozen=True)
class Rows:
    """One lane's rows of a call: input indices and the tokens each runs (after any cached prefix)."""

    lane: Lane
    indices: Sequence[int]
    lengths: Sequence[int]

    @property
    def cost(self) -> int:
        """Their cost in one pass, in tokens (rows x the cost of the longest)."""
        return len(self.indices) * self.lane.row_cost(max(self.lengths, default=0), self.lane.prefix_tokens)


class Job:
    """One call in the scheduler: its rows, per lane, longest first, and the future of its vectors.

    Args:
        ids: The call's token-id lists (indexed by the rows of ``groups``).
        groups: Its rows per lane.
        head: This call's head (:data:`Head`).
        dimension: D.
        budget: Most tokens of cost per pass (``max_batch_tokens``).
        row_limit: Most rows per pass (None: the budget decides).
        batch_wait_s: How long a worker may wait for more rows before a pass under half its budget and row limit.
        progress: Called with the number of rows done, after each pass (a progress bar).
        counters: Where the job's work is counted besides the scheduler's own (its embedder's).
    """

    _order = itertools.count()

    def __init__(
        self, ids: Sequence[Sequence[int]], groups: Sequence[Rows], head: Head, dimension: int, budget: int,
        row_limit: int | None, batch_wait_s: float = 0.0, progress: Callable[[int], object] | None = None,
        counters: Counters | None = None,
    ) -> None:  # fmt: skip
        self.ids, self.head, self.dimension, self.counters = ids, head, dimension, counters
        self.budget, self.row_limit, self.batch_wait_s, self.progress = budget, row_limit, batch_wait_s, progress
        self.lanes: dict[Hashable, Lane] = {group.lane.key: group.lane for group in groups}
        self.pending: dict[Hashable, deque[tuple[int, int]]] = {}  # lane key -> (row, length), longest first
        for group in groups:
            order = np.argsort(-np.asarray(group.lengths, dtype=np.int64), kind="stable")  # longest first
            queue = self.pending.setdefault(group.lane.key, deque())
            queue.extend((int(group.indices[i]), int(group.lengths[i])) for i in order)
        self.pending = {key: rows for key, rows in self.pending.items() if rows}
        self.total = sum(len(rows) for rows in self.pending.values())
        self.left = self.total  # rows not delivered yet
        self.cost_left = sum(length for rows in self.pending.values() for _, length in rows)
        self.order, self.submitted = next(Job._order), time.perf_counter()
        self.passed_over = 0  # passes cut since this job last had rows in one
        self.alone = False  # True after a shared pass with it failed: its rows run in passes of their own
        self.cancelled = False
        self.settled = False  # finish() ran: the future has its outcome
        self.future: Future[np.ndarray] = Future()
        self._parts: list[tuple[list[int], torch.Tensor]] = []

    @property
    def queued(self) -> int:
        """Rows not handed to a pass yet."""
        return sum(len(rows) for rows in self.pending.values())

    @property
    def live(self) -> bool:
        """Neither finished, failed nor cancelled (the future may be cancelled by its asyncio waiter before the
        scheduler drops the job's rows: still live until then)."""
        return not (self.cancelled or self.settled)

    def take(self, lane: Hashable, count: int) -> None:
        """Remove the first ``count`` rows of ``lane`` from the queue (a pass holds them now)."""
        queue = self.pending[lane]
        for _ in range(count):
            _, length = queue.popleft()
            self.cost_left -= length
        if not queue:
            del self.pending[lane]

    def give_back(self, lane: Lane, rows: list[int]) -> None:
        """Put ``rows`` back at the front of ``lane``'s queue (their pass did not run)."""
        queue = self.pending.setdefault(lane.key, deque())
        lengths = {row: len(self.ids[row]) - lane.prefix_tokens for row in rows}
        queue.extendleft((row, lengths[row]) for row in reversed(rows))
        self.cost_left += sum(lengths.values())

    def deliver(self, rows: list[int], vectors: torch.Tensor) -> bool:
        """Keep ``vectors`` (B, D) of ``rows``; True once every row has its vector."""
        self._parts.append((rows, vectors))
        self.left -= len(rows)
        if self.progress is not None:
            self.progress(len(rows))
        return self.left == 0

    def finish(self, error: BaseException | None = None) -> None:
        """Resolve the future: the vectors (N, D) in input order, or ``error``; a cancelled job stays cancelled.

        A finished job holds nothing of its embedder (lanes and head close over it), so a worker that still holds
        the job keeps no weights alive once the caller lets them go.
        """
        vectors = None
        if error is None and self.live:
            vectors = np.empty((self.total, self.dimension), dtype=np.float32)  # (N, D)
            for rows, part in self._parts:
                vectors[rows] = part.cpu().numpy()  # (B, D): the copy to the host, once per pass, at the end
        self._parts, self.lanes, self.pending, self.counters, self.progress = [], {}, {}, None, None
        self.head, self.settled = _finished_head, True
        with contextlib.suppress(InvalidStateError):  # cancelled meanwhile (asyncio cancels the future itself)
            if error is not None:
                self.future.set_exception(error)
            elif vectors is not None:
                self.future.set_result(vectors)
            else:
                self.future.cancel()

    def result(self) -> np.ndarray:
        """The vectors (N, D) in input order, once done; the error of a failed job is raised."""
        return self.future.result()


def _finished_head(pooled: torch.Tensor) -> torch.Tensor:
    """The head of a job that is done (cancelled while a pass held its rows): that pass's rows are discarded."""
    return pooled.float()
