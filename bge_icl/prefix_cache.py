"""The shared-prefix key/value cache: run the constant few-shot prefix once, reuse it for every query.

Every ICL query starts with the same tokens: BOS, the formatted examples, and the instruction up to the
``<query>`` special token, often 200-600 tokens against 5-30 of the query itself. The prefix is run
through the model once per embedder; each query batch then feeds only its own tokens, attending to the
cached keys and values. Works with the cache API of transformers 4.x (``past_key_values=``) and 5.x
(``cache=``).

Memory: one copy of the prefix's keys and values per embedder (per example set), ``2 x layers x kv_heads
x head_dim x P`` values; for bge-en-icl in float16, 128 KiB per prefix token (about 64 MiB for a
500-token prefix). During a batch the cache is materialized per row, which the token budget counts.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache


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


Group = tuple[list[int], list[int], int]  # input indices, their lengths to run, cached tokens before them


def stable_prefix(a: Sequence[int], b: Sequence[int], special_ids: set[int]) -> list[int]:
    """The ids every query starts with, from the token ids of two probe queries.

    Their common start, cut after its last special token (``<query>``) when it has one, else one
    token short, so query text never merges into the cached part.

    Example:
        >>> stable_prefix([1, 5, 9, 7, 2], [1, 5, 9, 8, 2], special_ids={9})
        [1, 5, 9]
    """
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    common = list(a[:n])
    last_special = max((i for i, t in enumerate(common) if t in special_ids), default=None)
    return common[: last_special + 1] if last_special is not None else common[:-1]


class SharedPrefix:
    """Prefix selection for one embedder: which queries run on the cached prefix, one cache per replica.

    The prefix ids are found once, on first use (``probe`` tokenizes two queries); they are cached only
    when longer than the tokenizer's head (BOS) and shorter than the attention window. Each replica
    builds its own :class:`PrefixCache` on its first prefix batch. Counters: queries run on the
    cache (``hits``), as whole prompts (``misses``), and caches built (``builds``).

    Args:
        probe: Token ids of two different queries, special tokens included.
        head: The ids the tokenizer puts before every text (BOS).
        special_ids: Special-token ids that may end the prefix (``<query>``).
        enabled: False = never cache (``prefix_cache=False``).
    """

    def __init__(
        self,
        probe: Callable[[], tuple[list[int], list[int]]],
        head: Sequence[int],
        special_ids: set[int],
        enabled: bool,
    ) -> None:
        self._probe, self._head, self._special, self._enabled = probe, list(head), special_ids, enabled
        self._ids: tuple[int, ...] | None = None
        self._known = False
        self._caches: dict[int, PrefixCache] = {}
        self._lock = threading.Lock()
        self.hits = self.misses = self.builds = 0

    def ids(self, window: int | None) -> tuple[int, ...] | None:
        """The cached prefix ids, or None when queries run whole (disabled, too short, or past ``window``)."""
        with self._lock:
            if not self._known:
                ids = stable_prefix(*self._probe(), self._special) if self._enabled else []
                usable = len(ids) > len(self._head) and (window is None or len(ids) < window)
                self._ids, self._known = (tuple(ids) if usable else None), True
            return self._ids

    @property
    def caches(self) -> dict[int, PrefixCache]:
        """The caches built so far, by replica index (a copy)."""
        with self._lock:
            return dict(self._caches)

    def split(self, ids: Sequence[Sequence[int]], window: int | None) -> list[Group]:
        """Groups for a :class:`~bge_icl.batching.BatchQueue`: queries that continue the prefix, then the rest."""
        everything = list(range(len(ids)))
        prefix = self.ids(window)
        if prefix is None:
            return [(everything, [len(x) for x in ids], 0)]
        P = len(prefix)
        hits = [i for i in everything if starts_with(ids[i], prefix, window)]
        misses = sorted(set(everything) - set(hits))
        with self._lock:
            self.hits += len(hits)
            self.misses += len(misses)
        return [(hits, [len(ids[i]) - P for i in hits], P), (misses, [len(ids[i]) for i in misses], 0)]

    def cache_on(self, replica: int, model: Any) -> PrefixCache:
        """The prefix's key/value cache on one replica, built on first use; call under that replica's lock."""
        cache = self._caches.get(replica)
        if cache is None:
            assert self._ids is not None, "split() finds the prefix before any prefix batch runs"
            cache = build_prefix_cache(model, self._ids)
            with self._lock:
                self._caches[replica] = cache
                self.builds += 1
        return cache


def _cache_kwarg(model: Any) -> str:
    # transformers 5.x renamed the forward argument ``past_key_values`` to ``cache``.
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def attention_window(model: Any) -> int | None:
    """The sliding window of the model's attention (None when it attends to everything)."""
    window = getattr(model.config, "sliding_window", None)
    return int(window) if window else None


@torch.inference_mode()
def build_prefix_cache(model: Any, ids: Sequence[int]) -> PrefixCache:
    """Run ``ids`` through ``model`` once and keep the keys and values of every layer."""
    device = next(model.parameters()).device
    input_ids = torch.tensor([list(ids)], dtype=torch.long, device=device)  # (1, P)
    position_ids = torch.arange(len(ids), device=device)[None]  # (1, P)
    out = model(input_ids=input_ids, position_ids=position_ids, use_cache=True)
    cache = out.get("cache", None) or out.get("past_key_values", None)
    return PrefixCache(tuple(ids), _layers_of(cache))  # each layer: (1, kv_heads, P, head_dim) twice


def _layers_of(cache: Any) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """Per-layer (keys, values) of a cache, across transformers versions."""
    if hasattr(cache, "layers"):  # 4.54+: DynamicCache.layers[i].keys / .values
        return tuple((layer.keys, layer.values) for layer in cache.layers)
    if hasattr(cache, "key_cache"):  # 4.46-4.53: DynamicCache.key_cache / value_cache lists
        return tuple(zip(cache.key_cache, cache.value_cache, strict=True))
    return tuple((k, v) for k, v, *_ in cache)  # the legacy tuple of (keys, values) per layer


def _new_cache(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A DynamicCache holding ``layers``, across transformers versions."""
    if "ddp_cache_data" in inspect.signature(DynamicCache.__init__).parameters:  # 4.5x+, 5.x
        return DynamicCache(layers)
    return DynamicCache.from_legacy_cache(tuple(layers))  # type: ignore[attr-defined]  # 4.46-4.5x (gone in 5.x)


def forward_with_prefix(
    model: Any, prefix: PrefixCache, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Last hidden states of query tokens that continue ``prefix``.

    Args:
        model: The base model.
        prefix: The cached prefix (P tokens).
        input_ids: The tokens after the prefix, right-padded, shape (B, T).
        attention_mask: 1 for real tokens, shape (B, T).

    Returns:
        Hidden states of shape (B, T, H).
    """
    B, T = input_ids.shape
    P = prefix.length
    layers = [(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in prefix.layers]  # (B, kv, P, d)
    cache = _new_cache(layers)
    full_mask = torch.cat([attention_mask.new_ones(B, P), attention_mask], dim=1)  # (B, P + T)
    position_ids = (P + torch.arange(T, device=input_ids.device)).expand(B, T)  # (B, T)
    out = model(
        input_ids=input_ids,
        attention_mask=full_mask,
        position_ids=position_ids,
        use_cache=True,
        **{_cache_kwarg(model): cache},
    )
    return out.last_hidden_state  # (B, T, H)
