"""Length-sorted batching under a row limit and a padded-token budget."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def length_order(lengths: Sequence[int]) -> np.ndarray:
    """Indices that sort ``lengths`` longest first (stable, so ties keep input order)."""
    return np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")


def next_batch_end(
    sorted_lengths: Sequence[int], start: int, batch_size: int, max_batch_tokens: int, overhead: int = 0
) -> int:
    """End (exclusive) of the batch that starts at ``start`` in a longest-first list.

    A batch takes at most ``batch_size`` rows and at most ``max_batch_tokens`` padded tokens
    (rows x (longest row + ``overhead``), where ``overhead`` counts cached prefix tokens that every
    row attends to). It always takes at least one row, however long.

    Example:
        >>> next_batch_end([10, 8, 8, 3], 0, batch_size=8, max_batch_tokens=25)
        2
    """
    longest = max(int(sorted_lengths[start]), 1)
    rows = max(1, min(batch_size, max_batch_tokens // (longest + overhead)))
    return min(start + rows, len(sorted_lengths))


@dataclass(frozen=True)
class Batch:
    """Rows of one forward pass, longest first.

    Attributes:
        rows: Input indices.
        lengths: Token counts fed to the model for each row (after any cached prefix).
        skip: Cached prefix tokens every row attends to (0 without a prefix cache).
    """

    rows: list[int]
    lengths: list[int]
    skip: int

    @property
    def padded_tokens(self) -> int:
        """Rows x (longest row + cached prefix)."""
        return len(self.rows) * (self.lengths[0] + self.skip)


class BatchQueue:
    """Hands out length-sorted batches under one token budget, to one worker or several.

    Each group is a list of input indices with their lengths and cached-prefix size; groups are served
    in order. After an out-of-memory error a worker calls :meth:`shrink`: the budget is halved for
    the rest of the call and the same rows go back to the front of the queue, cut by the new budget.
    """

    def __init__(
        self, groups: Sequence[tuple[Sequence[int], Sequence[int], int]], batch_size: int, budget: int
    ) -> None:
        self.batch_size, self.budget = batch_size, budget
        self._pending: deque[Batch] = deque()
        for indices, lengths, skip in groups:
            order = length_order(lengths)
            self._pending.append(Batch([int(indices[i]) for i in order], [int(lengths[i]) for i in order], skip))
        self._lock = threading.Lock()
        self._closed = False

    def take(self) -> Batch | None:
        """The next batch, or None when all are handed out or the queue was closed."""
        with self._lock:
            while self._pending and not self._closed:
                head = self._pending.popleft()
                if not head.rows:
                    continue
                end = next_batch_end(head.lengths, 0, self.batch_size, self.budget, overhead=head.skip)
                if end < len(head.rows):
                    self._pending.appendleft(Batch(head.rows[end:], head.lengths[end:], head.skip))
                return Batch(head.rows[:end], head.lengths[:end], head.skip)
            return None

    def shrink(self, batch: Batch) -> None:
        """Halve the budget below ``batch``'s padded size and queue ``batch`` again, first."""
        with self._lock:
            self.budget = min(self.budget, max(1, batch.padded_tokens // 2))
            self._pending.appendleft(batch)

    def close(self) -> None:
        """Stop handing out batches (after a worker failed)."""
        with self._lock:
            self._closed = True
