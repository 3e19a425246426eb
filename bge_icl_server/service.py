"""``EmbeddingService``: the loaded model behind a server, one embedder per model id, admission and health.

No HTTP here: :mod:`bge_icl_server.app` turns requests into calls of this class. One set of weights serves every
model id: the served name's embedder is zero-shot (it also embeds every passage, whose vectors do not depend on
the examples), and each example set's embedder comes from it through ``with_examples``, sharing the weights.
Requests go through ``ICLEmbedder.aembed``, so concurrent requests share the core's batching.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Literal

from bge_icl.encoder import Embedded, ICLEmbedder, Kind, Stats
from bge_icl.errors import InputError
from bge_icl.truncation import OnTruncation, TruncationError
from bge_icl_server.config import ServerConfig

log = logging.getLogger("bge_icl_server")

State = Literal["new", "loading", "ready", "failed"]
# A replica whose forward pass fails this many times in a row (errors not caused by the request) reports unhealthy.
FAILURES_UNHEALTHY = 3
DRAIN_WINDOW_S = 30.0  # the drain rate behind Retry-After is measured over this many seconds
RETRY_AFTER_MAX_S = 60


class QueueFull(Exception):
    """Admitting a request would pass ``max_queue_rows``.

    Attributes:
        rows: The request's texts.
        queued: Texts in the core's queue (waiting or running).
        limit: ``max_queue_rows``.
        retry_after: Seconds until the queue has drained enough, at its measured rate (1 to 60).
    """

    def __init__(self, rows: int, queued: int, limit: int, retry_after: int) -> None:
        super().__init__(f"{rows} rows would join {queued} queued; the limit is {limit}")
        self.rows, self.queued, self.limit, self.retry_after = rows, queued, limit, retry_after


class DrainRate:
    """Texts embedded per second over the last ``window`` seconds, from the core's row counter.

    Args:
        window: Seconds of history kept.
    """

    def __init__(self, window: float = DRAIN_WINDOW_S) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def sample(self, rows_done: int, now: float | None = None) -> None:
        """Record the core's total of rows embedded at ``now`` (a request just finished)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._samples.append((now, rows_done))
            while self._samples and self._samples[0][0] < now - self.window:
                self._samples.popleft()

    def seconds_for(self, rows: int) -> int:
        """Whole seconds to embed ``rows`` more at the measured rate, 1 to 60 (1 before anything was measured)."""
        with self._lock:
            (t0, r0), (t1, r1) = (self._samples[0], self._samples[-1]) if self._samples else ((0.0, 0), (0.0, 0))
        if t1 <= t0 or r1 <= r0:
            return 1
        return min(RETRY_AFTER_MAX_S, max(1, math.ceil(rows * (t1 - t0) / (r1 - r0))))


class EmbeddingService:
    """The embedders of one :class:`~bge_icl_server.config.ServerConfig`, loaded once.

    Args:
        config: What to serve.

    Example:
        >>> service = EmbeddingService(config)  # doctest: +SKIP
        >>> service.load()  # blocking: loads the weights, builds each set's prefix cache  # doctest: +SKIP
        >>> service.embedder("web-search", "queries").dimension  # doctest: +SKIP
        4096
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._state: State = "new"
        self._error: BaseException | None = None
        self._embedders: dict[str, ICLEmbedder] = {}
        self._lock = threading.Lock()
        self._failures = 0
        self.drain = DrainRate()
        self.load_seconds: float | None = None

    # -- loading -----------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """``"new"``, ``"loading"``, ``"ready"`` (model loaded, prefixes built) or ``"failed"`` (see :attr:`error`)."""
        return self._state

    @property
    def error(self) -> BaseException | None:
        """Why loading failed (None unless :attr:`state` is ``"failed"``)."""
        return self._error

    @property
    def healthy(self) -> bool:
        """Ready, and the last forward passes did not keep failing."""
        return self._state == "ready" and self._failures < FAILURES_UNHEALTHY

    def load(self) -> None:
        """Load the weights, make one embedder per model id, and build each one's prefix cache (blocking).

        Raises:
            OSError: The model cannot be loaded (the state becomes ``"failed"``).
            ValueError: An option is out of range for this model (``truncate_dim`` above its dimension).
        """
        with self._lock:
            if self._state != "new":
                return
            self._state = "loading"
        start = time.perf_counter()
        try:
            base = ICLEmbedder.from_options(self.config.embedder_options())
            embedders = {self.config.served_name: base}
            for name, example_set in self.config.example_sets.items():
                embedders[name] = base.with_options(
                    examples_for_task=example_set.examples, query_instruction_for_retrieval=example_set.instruction
                )
            for emb in embedders.values():
                emb.warm_up()  # each set's prefix key/value cache, on every replica
        except BaseException as e:
            self._error, self._state = e, "failed"
            raise
        self._embedders = embedders
        self.load_seconds = time.perf_counter() - start
        self._state = "ready"
        dtype = str(base.torch_dtype).removeprefix("torch.")
        log.info("ready: model ids %s, dimension %d, %s, %s, loaded and prefixes built in %.1f s",
                 ", ".join(embedders), base.dimension, base.device, dtype, self.load_seconds)  # fmt: skip

    def start_loading(self) -> threading.Thread:
        """:meth:`load` in a daemon thread (the server answers ``/health`` with 503 meanwhile)."""

        def run() -> None:
            try:
                self.load()
            except Exception:
                log.exception("the model %s could not be loaded", self.config.model)

        thread = threading.Thread(target=run, name="bge-icl-load", daemon=True)
        thread.start()
        return thread

    # -- serving -----------------------------------------------------------------------------------

    @property
    def dimension(self) -> int:
        """Size of the vectors (the model's, or ``truncate_dim``)."""
        return self._embedders[self.config.served_name].dimension

    def embedder(self, model_id: str, kind: Kind) -> ICLEmbedder:
        """The embedder for ``model_id`` (must be served) and ``kind``: passages always use the zero-shot one."""
        return self._embedders[self.config.served_name if kind == "passages" else model_id]

    @property
    def queued_rows(self) -> int:
        """Texts in the core's queue, of every model id (waiting or running): what admission reads."""
        return self.stats().queued_rows if self._embedders else 0

    def admit(self, rows: int) -> None:
        """Refuse ``rows`` more when they would pass ``max_queue_rows`` (a request is always admitted when the
        queue is empty). Texts still being tokenized are not in the queue yet, so the limit is a soft one.

        Raises:
            QueueFull: The queue is full (with the seconds its measured rate needs to make room).
        """
        queued, limit = self.queued_rows, self.config.max_queue_rows
        if queued and queued + rows > limit:
            raise QueueFull(rows, queued, limit, self.drain.seconds_for(queued + rows - limit))

    async def embed(
        self, model_id: str, texts: Sequence[str], kind: Kind, on_truncation: OnTruncation, dimensions: int | None
    ) -> Embedded:
        """Embed ``texts`` through the core's ``aembed`` (``dimensions``: its per-call head cuts the vectors);
        counts failures that are not the request's fault, and samples the drain rate.

        Raises:
            InputError, TruncationError: The request's texts (``.index`` / ``.indices`` name them).
        """
        embedder = self.embedder(model_id, kind)
        try:
            result = await embedder.aembed(list(texts), kind, on_truncation=on_truncation, dimensions=dimensions)
        except (InputError, TruncationError):
            raise
        except Exception:
            self._failures += 1
            raise
        self._failures = 0
        self.drain.sample(sum(embedder.scheduler_stats.replica_rows))
        return result

    def stats(self) -> Stats:
        """The model's counters: rows and forward passes of every model id together (they share the weights and
        the core's scheduler, so a pass that holds rows of several ids counts once), prefix hits summed."""
        shared = self._embedders[self.config.served_name].scheduler_stats
        hits = sum(emb.stats.prefix_hits for emb in self._embedders.values())
        return dataclasses.replace(shared, prefix_hits=hits)
