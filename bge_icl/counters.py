"""``Counters``: the work counted for one embedder, or for a whole scheduler (thread-safe)."""

from __future__ import annotations

import threading


class Counters:
    """Rows embedded per replica, forward passes, and rows queued or running.

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

    @property
    def queued_rows(self) -> int:
        """Rows of calls in flight that have not been embedded yet."""
        with self._lock:
            return self._queued

    def add(self, replica: int | None = None, rows: int = 0, passes: int = 0, queued: int = 0) -> None:
        """Count ``rows`` embedded on ``replica``, ``passes`` passes, and a change of ``queued`` rows."""
        with self._lock:
            if replica is not None:
                self._rows[replica] += rows
            self._passes += passes
            self._queued += queued
