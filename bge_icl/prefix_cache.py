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
from collections.abc import Sequence
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
