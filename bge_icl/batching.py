"""Length-sorted batching under a row limit and a padded-token budget."""

from __future__ import annotations

from collections.abc import Sequence

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


def plan_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int) -> list[np.ndarray]:
    """Split input indices into longest-first batches; each batch is an array of input indices."""
    order = length_order(lengths)
    sorted_lengths = [int(lengths[i]) for i in order]
    batches, start = [], 0
    while start < len(order):
        end = next_batch_end(sorted_lengths, start, batch_size, max_batch_tokens)
        batches.append(order[start:end])
        start = end
    return batches
