"""``Runner``: what one embedder runs on its weights, decided at setup: the forward path, the prefix KV store, the
head, and the two lanes its rows go to.

The embedder prepares a call (token ids, :mod:`bge_icl.encoder`); the scheduler runs passes of a lane's rows from
any calls (:mod:`bge_icl.scheduler`), calling the lane's forward (a runner's :meth:`Runner.forward_whole` /
:meth:`Runner.forward_cached`, which build the prefix KV on a replica's first cached pass) and each call's head.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from functools import partial

import torch

from bge_icl.batching import copied_prefix_cost
from bge_icl.errors import OptionValueError
from bge_icl.forward import ForwardPath, build_prefix_kv
from bge_icl.job import Lane, Rows
from bge_icl.loading import LoadedModel
from bge_icl.options import positive_int
from bge_icl.pooling import embedding_head
from bge_icl.prefix_cache import PrefixKV, PrefixKVStore, split_on_prefix

_SERIAL = itertools.count()


class Runner:
    """One embedder's forward path, prefix KV and head on one set of replicas.

    Args:
        path: The forward path of cached queries (``prefix_attention`` resolved).
        prefix_ids: The ids whose keys and values are reused (None: every query runs whole).
        truncate_dim: Dimensions kept by the head (None: all).
        normalize: L2-normalize in the head.
    """

    def __init__(
        self, path: ForwardPath, prefix_ids: tuple[int, ...] | None, truncate_dim: int | None, normalize: bool
    ) -> None:
        self.path, self.prefix_ids = path, prefix_ids
        self.truncate_dim, self.normalize = truncate_dim, normalize
        self.kv = PrefixKVStore()
        self.whole = Lane(("whole",), 0, copied_prefix_cost, self.forward_whole)
        key = ("prefix", next(_SERIAL), path.attention, path.kernel)  # this runner's prefix KV: its own lane
        self.cached = Lane(key, len(prefix_ids or ()), path.row_cost, self.forward_cached)

    def rows(self, ids: Sequence[Sequence[int]], queries: bool, window: int | None) -> tuple[Rows, ...]:
        """A call's rows per lane: queries that continue the prefix ids on :attr:`cached`, the rest on
        :attr:`whole`."""
        if not queries:
            return (Rows(self.whole, range(len(ids)), [len(x) for x in ids]),)
        groups = split_on_prefix(ids, self.prefix_ids, window)
        return tuple(Rows(self.cached if prefix else self.whole, rows, lengths) for rows, lengths, prefix in groups)

    def count(self, rows: Sequence[Rows]) -> None:
        """Count a query call's rows as prefix hits and misses (nothing when no prefix ids are cached)."""
        if self.prefix_ids is not None:
            hits = sum(len(r.indices) for r in rows if r.lane is self.cached)
            self.kv.count(hits, sum(len(r.indices) for r in rows) - hits)

    def warm_up(self, replicas: Sequence[LoadedModel]) -> None:
        """Build the prefix KV on every replica that has none yet (a server's start-up)."""
        if self.prefix_ids is None:
            return
        for replica, loaded in enumerate(replicas):
            with loaded.lock:
                self._kv_on(replica, loaded)

    def forward_whole(self, replica: int, loaded: LoadedModel, ids: list[Sequence[int]]) -> torch.Tensor:
        """One pass of whole prompts, from any calls on these weights -> (B, H) pooled."""
        return self.path.pooled(loaded.model, ids, loaded.tokenizer.pad_id, None)

    def forward_cached(self, replica: int, loaded: LoadedModel, ids: list[Sequence[int]]) -> torch.Tensor:
        """One pass of queries that continue the prefix ids (this runner's calls) -> (B, H) pooled."""
        return self.path.pooled(loaded.model, ids, loaded.tokenizer.pad_id, self._kv_on(replica, loaded))

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """A call's part of a pass: (B, H) pooled -> (B, D) float32 vectors (cut, normalized)."""
        return embedding_head(pooled, self.truncate_dim, self.normalize)

    def call_head(self, dimension: int, dimensions: int | None) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
        """A call's head and its D: the embedder's own (``dimensions`` None, D = ``dimension``), or one that cuts the
        pooled (B, H) to this call's first ``dimensions`` before normalizing (a server's per-request ``dimensions``).

        Raises:
            OptionValueError: ``dimensions`` is not in ``1..dimension`` (``.option == "dimensions"``).
        """
        if dimensions is None:
            return self.head, dimension
        if not 0 < positive_int("dimensions", dimensions) <= dimension:
            msg = f"dimensions={dimensions} is out of range; valid: 1 to {dimension}"
            raise OptionValueError(msg, option="dimensions", value=dimensions)
        return partial(embedding_head, truncate_dim=dimensions, normalize=self.normalize), dimensions

    def _kv_on(self, replica: int, loaded: LoadedModel) -> PrefixKV:
        kv = self.kv.get(replica)
        if kv is None:
            assert self.prefix_ids is not None, "rows() puts no query on the prefix lane when no ids are cached"
            kv = self.kv.put(replica, build_prefix_kv(loaded.model, self.prefix_ids))
        return kv
