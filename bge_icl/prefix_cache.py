"""The few-shot prefix's key/value caches: run the constant query start once per replica, reuse it for every query.

Every ICL query starts with the same tokens: BOS, the formatted examples, and the instruction up to the
``<query>`` special token, often 200-600 tokens against 5-30 of the query itself. Which ids those are is decided
once, at setup (:class:`~bge_icl.prompt_layout.PromptLayout`); here each replica runs them through the model on its
first prefix batch (:func:`bge_icl.forward.build_prefix_cache`), and each query batch then feeds only its own
tokens, attending to the cached keys and values.

Memory: one copy of the prefix's keys and values per embedder (per example set) and replica, ``2 x layers x
kv_heads x head_dim x P`` values; for bge-en-icl in float16, 128 KiB per prefix token (about 64 MiB for a
500-token prefix).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

Group = tuple[list[int], list[int], int]  # input indices, their lengths to run, cached tokens before them


@dataclass(frozen=True)
class PrefixCache:
    """Token ids of the constant prompt start and their per-layer keys and values.

    Attributes:
        ids: The cached token ids, BOS included.
        layers: Per layer ``(keys, values)``, each of shape (1, kv_heads, P, head_dim).
    """

    ids: tuple[int, ...]
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    @property
    def length(self) -> int:
        """Number of cached tokens, P."""
        return len(self.ids)


def starts_with(ids: Sequence[int], prefix_ids: Sequence[int], max_total: int | None) -> bool:
    """Whether ``ids`` continues ``prefix_ids`` (with at least one more token) and fits the attention window."""
    P = len(prefix_ids)
    fits = max_total is None or len(ids) <= max_total
    return fits and len(ids) > P and list(ids[:P]) == list(prefix_ids)


def attention_window(model: Any) -> int | None:
    """The sliding window of the model's attention (None when it attends to everything)."""
    window = getattr(model.config, "sliding_window", None)
    return int(window) if window else None


class PrefixCaches:
    """One embedder's prefix caches, one per replica, and which queries run on them.

    Counters: queries run on the cache (``hits``), as whole prompts although a prefix is cached (``misses``),
    and caches built (``builds``).

    Args:
        ids: The cached prefix ids (:attr:`PromptLayout.cached_ids`); None: every query runs whole.
    """

    def __init__(self, ids: tuple[int, ...] | None) -> None:
        self.ids = ids
        self._caches: dict[int, PrefixCache] = {}
        self._lock = threading.Lock()
        self.hits = self.misses = self.builds = 0

    @property
    def caches(self) -> dict[int, PrefixCache]:
        """The caches built so far, by replica index (a copy)."""
        with self._lock:
            return dict(self._caches)

    def split(self, ids: Sequence[Sequence[int]], window: int | None) -> list[Group]:
        """Batching groups: queries that continue the prefix (and fit ``window``), then the rest, run whole."""
        everything = list(range(len(ids)))
        if self.ids is None:
            return [(everything, [len(x) for x in ids], 0)]
        P = len(self.ids)
        hits = [i for i in everything if starts_with(ids[i], self.ids, window)]
        misses = sorted(set(everything) - set(hits))
        return [(hits, [len(ids[i]) - P for i in hits], P), (misses, [len(ids[i]) for i in misses], 0)]

    def count(self, hits: int, misses: int) -> None:
        """Count queries that run on the cache (``hits``) and queries that run whole although it exists."""
        if self.ids is None:
            return
        with self._lock:
            self.hits += hits
            self.misses += misses

    def cache_on(self, replica: int, model: Any, build: Callable[[Any, tuple[int, ...]], PrefixCache]) -> PrefixCache:
        """The cache on one replica, built with ``build(model, ids)`` on first use; call under that replica's lock."""
        cache = self._caches.get(replica)
        if cache is None:
            assert self.ids is not None, "split() puts no query on the prefix path when nothing is cached"
            cache = build(model, self.ids)
            with self._lock:
                self._caches[replica] = cache
                self.builds += 1
        return cache
