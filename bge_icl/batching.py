"""Length-sorted batching under a row limit and a token budget that counts what a row really costs.

The row-cost models (:func:`copied_prefix_cost`, :func:`shared_prefix_cost`) are here too: what one row of a
forward pass costs, in tokens, on each path (:mod:`bge_icl.forward`).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def length_order(lengths: Sequence[int]) -> np.ndarray:
    """Indices that sort ``lengths`` longest first (stable, so ties keep input order)."""
    return np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")


RowCost = Callable[[int, int], int]  # (longest row's tokens, cached prefix tokens) -> cost of one row, in tokens


def copied_prefix_cost(longest: int, skip: int) -> int:
    """A row that holds its own copy of the ``skip`` cached prefix tokens: ``longest + skip`` (the copy path, and
    whole prompts, where ``skip`` is 0)."""
    return longest + skip


def shared_prefix_cost(config: Any) -> RowCost:
    """The cost of one cached-query row on the shared-prefix path, in tokens.

    A row runs ``T`` tokens through the layers (their activations are the cost of a token) and holds
    ``heads x T x P`` attention scores for the prefix; these are counted in tokens of the MLP's width, so a
    batch of short queries can hold hundreds of rows while the prefix is never copied.

    Example:
        >>> from types import SimpleNamespace
        >>> shared_prefix_cost(SimpleNamespace(num_attention_heads=32, intermediate_size=14336))(30, 500)
        64
    """
    width = getattr(config, "intermediate_size", None) or 4 * config.hidden_size
    heads, width = int(config.num_attention_heads), int(width)

    def cost(longest: int, skip: int) -> int:
        return longest + -(-longest * heads * skip // width)  # T + ceil(T * heads * P / width)

    return cost


def next_batch_end(
    sorted_lengths: Sequence[int],
    start: int,
    batch_size: int | None,
    max_batch_tokens: int,
    overhead: int = 0,
    row_cost: RowCost = copied_prefix_cost,
) -> int:
    """End (exclusive) of the batch that starts at ``start`` in a longest-first list.

    A batch takes at most ``batch_size`` rows (None: no row limit) and at most ``max_batch_tokens`` of cost,
    rows x ``row_cost(longest row, overhead)``, where ``overhead`` is the cached prefix every row attends to.
    It always takes at least one row, however long.

    Example:
        >>> next_batch_end([10, 8, 8, 3], 0, batch_size=8, max_batch_tokens=25)
        2
    """
    longest = max(int(sorted_lengths[start]), 1)
    rows = max(1, max_batch_tokens // max(1, row_cost(longest, overhead)))
    rows = rows if batch_size is None else min(batch_size, rows)
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
    row_cost: RowCost = field(default=copied_prefix_cost, compare=False, repr=False)

    @property
    def padded_tokens(self) -> int:
        """Rows x the cost of the longest row (with the copy path: its tokens + the cached prefix)."""
        return len(self.rows) * self.row_cost(self.lengths[0], self.skip)


class BatchQueue:
    """Hands out length-sorted batches under one token budget, to one worker or several.

    Each group is a list of input indices with their lengths and cached-prefix size; groups are served
    in order. After an out-of-memory error a worker calls :meth:`shrink`: the budget is halved for
    the rest of the call and the same rows go back to the front of the queue, cut by the new budget.
    """

    def __init__(
        self,
        groups: Sequence[tuple[Sequence[int], Sequence[int], int]],
        batch_size: int | None,
        budget: int,
        row_cost: RowCost = copied_prefix_cost,
    ) -> None:
        self.batch_size, self.budget = batch_size, budget
        self._pending: deque[Batch] = deque()
        for indices, lengths, skip in groups:
            order = length_order(lengths)
            rows, sorted_lengths = [int(indices[i]) for i in order], [int(lengths[i]) for i in order]
            self._pending.append(Batch(rows, sorted_lengths, skip, row_cost if skip else copied_prefix_cost))
        self.batches = self._count()
        """How many batches the queue would hand out at its starting budget (for the progress bar)."""
        self.rows = sum(len(batch.rows) for batch in self._pending)
        """How many rows the queue holds in all."""
        self.done = 0
        """How many rows have been embedded (:meth:`finished`)."""
        self._lock = threading.Lock()
        self._closed = False

    def take(self) -> Batch | None:
        """The next batch, or None when all are handed out or the queue was closed."""
        with self._lock:
            while self._pending and not self._closed:
                head = self._pending.popleft()
                if not head.rows:
                    continue
                end = next_batch_end(head.lengths, 0, self.batch_size, self.budget, head.skip, head.row_cost)
                if end < len(head.rows):
                    self._pending.appendleft(Batch(head.rows[end:], head.lengths[end:], head.skip, head.row_cost))
                return Batch(head.rows[:end], head.lengths[:end], head.skip, head.row_cost)
            return None

    def shrink(self, batch: Batch) -> None:
        """Halve the budget below ``batch``'s padded size and queue ``batch`` again, first."""
        with self._lock:
            self.budget = min(self.budget, max(1, batch.padded_tokens // 2))
            self._pending.appendleft(batch)

    def _count(self) -> int:
        total = 0
        for batch in self._pending:
            start = 0
            while start < len(batch.rows):
                start = next_batch_end(batch.lengths, start, self.batch_size, self.budget, batch.skip, batch.row_cost)
                total += 1
        return total

    def finished(self, batch: Batch) -> None:
        """Count ``batch``'s rows as embedded."""
        with self._lock:
            self.done += len(batch.rows)

    def close(self) -> None:
        """Stop handing out batches (after a worker failed)."""
        with self._lock:
            self._closed = True
