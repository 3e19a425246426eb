"""``EmbeddingService``: the loaded model behind a server, one embedder per model id, admission and health.

No HTTP here: :mod:`bge_icl_server.app` turns requests into calls of this class. One set of weights serves every
model id: the served name's embedder is zero-shot (it also embeds every passage, whose vectors do not depend on
the examples), and each example set's embedder comes from it through ``with_examples``, sharing the weights.
Requests go through ``ICLEmbedder.aembed``, so concurrent requests share the core's batching.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
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


class QueueFull(Exception):
    """Admitting a request would pass ``max_queue_rows``."""

    def __init__(self, rows: int, queued: int, limit: int) -> None:
        super().__init__(f"{rows} rows would join {queued} queued; the limit is {limit}")
        self.rows, self.queued, self.limit = rows, queued, limit


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
        self._queued = 0
        self._failures = 0
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

    @property
    def normalizes(self) -> bool:
        """Whether the vectors are L2-normalized (then a request's ``dimensions`` re-normalizes after the cut)."""
        return self._embedders[self.config.served_name].options.normalize_embeddings

    def embedder(self, model_id: str, kind: Kind) -> ICLEmbedder:
        """The embedder for ``model_id`` (must be served) and ``kind``: passages always use the zero-shot one."""
        return self._embedders[self.config.served_name if kind == "passages" else model_id]

    @property
    def queued_rows(self) -> int:
        """Texts of admitted requests that have not been answered yet."""
        return self._queued

    def admit(self, rows: int) -> None:
        """Count ``rows`` as queued, unless that passes ``max_queue_rows`` (always admitted when nothing is queued).

        Raises:
            QueueFull: The queue is full; nothing was counted.
        """
        with self._lock:
            if self._queued and self._queued + rows > self.config.max_queue_rows:
                raise QueueFull(rows, self._queued, self.config.max_queue_rows)
            self._queued += rows

    def release(self, rows: int) -> None:
        """The ``rows`` of an admitted request were answered (or the request ended)."""
        with self._lock:
            self._queued -= rows

    async def embed(
        self, model_id: str, texts: Sequence[str], kind: Kind, on_truncation: OnTruncation
    ) -> Embedded:
        """Embed ``texts`` through the core's ``aembed``; counts failures that are not the request's fault.

        Raises:
            InputError, TruncationError: The request's texts (``.index`` / ``.indices`` name them).
        """
        try:
            result = await self.embedder(model_id, kind).aembed(list(texts), kind, on_truncation=on_truncation)
        except (InputError, TruncationError):
            raise
        except Exception:
            self._failures += 1
            raise
        self._failures = 0
        return result

    def stats(self) -> Stats:
        """The model's counters: rows and forward passes of every model id together (they share the weights and
        the core's scheduler, so a pass that holds rows of several ids counts once), prefix hits summed."""
        shared = self._embedders[self.config.served_name].scheduler_stats
        hits = sum(emb.stats.prefix_hits for emb in self._embedders.values())
        return dataclasses.replace(shared, prefix_hits=hits)
