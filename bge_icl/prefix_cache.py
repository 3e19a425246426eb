"""The few-shot prefix's keys and values (KV): run the constant query start once per replica, reuse it for every query.

One word per meaning: the *prefix* is the few-shot text (:attr:`PromptLayout.prefix`), the *prefix ids* are the
token ids every query starts with (:attr:`PromptLayout.cached_ids`), the *prefix KV* are their keys and values
(:class:`PrefixKV`, kept per replica in a :class:`PrefixKVStore` that the embedder's runner owns,
:mod:`bge_icl.runner`). The options keep their names: ``prefix_cache`` (reuse the prefix KV) and
``prefix_attention`` (how cached queries attend to it).

Every ICL query starts with the same tokens: BOS, the formatted examples, and the instruction up to the
``<query>`` special token, often 200-600 tokens against 5-30 of the query itself. Which ids those are is decided
once, at setup (:class:`~bge_icl.prompt_layout.PromptLayout`); each replica runs them through the model on its
first prefix batch (:func:`bge_icl.forward.build_prefix_kv`), and each query batch then feeds only its own
tokens, attending to the prefix KV.

Memory: one copy of the prefix's keys and values per embedder (per example set) and replica, ``2 x layers x
kv_heads x head_dim x P`` values; for bge-en-icl in float16, 128 KiB per prefix token (about 64 MiB for a
500-token prefix).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

Group = tuple[list[int], list[int], int]  # input indices, their lengths to run, cached tokens before them


@dataclass(frozen=True)
class PrefixKV:
    """The prefix ids and their per-layer keys and values.

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


def split_on_prefix(
    ids: Sequence[Sequence[int]], prefix_ids: tuple[int, ...] | None, window: int | None
) -> list[Group]:
    """Rows per path: queries that continue ``prefix_ids`` (and fit ``window``), then the rest, run whole.

    Returns:
        ``(indices, lengths to run, prefix tokens before them)`` per group; one whole group without prefix ids.
    """
    everything = list(range(len(ids)))
    if prefix_ids is None:
        return [(everything, [len(x) for x in ids], 0)]
    P = len(prefix_ids)
    hits = [i for i in everything if starts_with(ids[i], prefix_ids, window)]
    misses = sorted(set(everything) - set(hits))
    return [(hits, [len(ids[i]) - P for i in hits], P), (misses, [len(ids[i]) for i in misses], 0)]


class PrefixKVStore:
    """One embedder's prefix KV, one per replica, and its counters (thread-safe).

    Counters: queries run on the prefix KV (``hits``), as whole prompts although prefix ids are cached (``misses``),
    and prefix KV built (``builds``).
    """

    def __init__(self) -> None:
        self._kv: dict[int, PrefixKV] = {}
        self._lock = threading.Lock()
        self.hits = self.misses = self.builds = 0

    def snapshot(self) -> dict[int, PrefixKV]:
        """The prefix KV built so far, by replica index (a copy)."""
        with self._lock:
            return dict(self._kv)

    def get(self, replica: int) -> PrefixKV | None:
        """``replica``'s prefix KV, None before it is built."""
        with self._lock:
            return self._kv.get(replica)

    def put(self, replica: int, kv: PrefixKV) -> PrefixKV:
        """Keep ``kv`` as ``replica``'s (counted as a build); returns it."""
        with self._lock:
            self._kv[replica] = kv
            self.builds += 1
        return kv

    def count(self, hits: int, misses: int) -> None:
        """Count queries that run on the prefix KV (``hits``) and queries that run whole beside it (``misses``)."""
        with self._lock:
            self.hits += hits
            self.misses += misses
