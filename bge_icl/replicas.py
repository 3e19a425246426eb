"""Replica scheduling: one worker per loaded model replica, one shared batch queue, out-of-memory backoff.

With one replica the calling thread does the work; with several, one thread per replica takes batches
from the same :class:`~bge_icl.batching.BatchQueue` (each forward pass holds its replica's lock, so
concurrent calls on one embedder interleave batch by batch). A ``torch.OutOfMemoryError`` halves the
token budget for the rest of the call and retries the same rows; a single row that still does not fit
is re-raised with advice. The first failure of any worker stops the others and is raised.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

import torch

from bge_icl.batching import Batch, BatchQueue
from bge_icl.loading import LoadedModel

# (replica index, its loaded model, the batch) -> (B, H) vectors; runs under the replica's lock.
Step = Callable[[int, LoadedModel, Batch], torch.Tensor]
# (the batch, its (B, H) vectors on the replica's device) -> None; runs outside the lock.
Sink = Callable[[Batch, torch.Tensor], None]


class ReplicaPool:
    """The loaded replicas of one embedder and the workers that serve a batch queue with them.

    Args:
        replicas: One :class:`~bge_icl.loading.LoadedModel` per device entry, in order.
    """

    def __init__(self, replicas: Sequence[LoadedModel]) -> None:
        self.replicas: tuple[LoadedModel, ...] = tuple(replicas)
        self._rows = [0] * len(self.replicas)
        self._passes = 0
        self._queued = 0
        self._lock = threading.Lock()

    @property
    def rows(self) -> tuple[int, ...]:
        """Texts embedded by each replica so far."""
        with self._lock:
            return tuple(self._rows)

    @property
    def passes(self) -> int:
        """Forward passes run so far (retries after out of memory not counted)."""
        with self._lock:
            return self._passes

    @property
    def queued(self) -> int:
        """Rows of calls in flight that have not been embedded yet."""
        with self._lock:
            return self._queued

    def run(self, queue: BatchQueue, step: Step, sink: Sink) -> None:
        """Serve ``queue`` with every replica until it is empty; the first failure is raised."""
        with self._lock:
            self._queued += queue.rows
        try:
            self._serve(queue, step, sink)
        finally:
            with self._lock:
                self._queued -= queue.rows - queue.done

    def _serve(self, queue: BatchQueue, step: Step, sink: Sink) -> None:
        if len(self.replicas) == 1:
            self._work(0, queue, step, sink)
            return
        with ThreadPoolExecutor(len(self.replicas), thread_name_prefix="bge-icl-replica") as pool:
            futures = [pool.submit(self._work, r, queue, step, sink) for r in range(len(self.replicas))]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            if any(f.exception() is not None for f in done):
                queue.close()
            wait(futures)
        for future in futures:
            error = future.exception()
            if error is not None:
                raise error

    def _work(self, replica: int, queue: BatchQueue, step: Step, sink: Sink) -> None:
        loaded = self.replicas[replica]
        while (batch := queue.take()) is not None:
            with loaded.lock:
                try:
                    vectors = step(replica, loaded, batch)  # (B, H)
                except torch.OutOfMemoryError as e:
                    if len(batch.rows) == 1:
                        msg = (
                            f"out of memory on {loaded.device} ({loaded.dtype}) for a single sequence of "
                            f"{batch.lengths[0] + batch.skip} tokens; lower query_max_length/passage_max_length, "
                            "use dtype='float16', or use a device with more memory"
                        )
                        raise torch.OutOfMemoryError(msg) from e
                    queue.shrink(batch)  # half the budget, kept for the rest of the call; same rows again
                    if loaded.device.type == "cuda":
                        with torch.cuda.device(loaded.device):
                            torch.cuda.empty_cache()
                    continue
            sink(batch, vectors)
            queue.finished(batch)
            with self._lock:
                self._rows[replica] += len(batch.rows)
                self._passes += 1
                self._queued -= len(batch.rows)
