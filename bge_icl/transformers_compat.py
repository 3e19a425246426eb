"""Every difference between the transformers versions bge-icl supports (4.46 to 5.x), in one place.

The rest of the core calls these and never looks at the installed version or at a model's private layout.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import transformers
from packaging.version import Version
from transformers import DynamicCache
from transformers.models.mistral.modeling_mistral import apply_rotary_pos_emb

__all__ = ["apply_rotary_pos_emb", "attention_implementation", "cache_kwarg", "cache_layers", "dtype_kwarg",
           "new_cache", "rotary_embedding"]  # fmt: skip


def dtype_kwarg() -> str:
    """The ``from_pretrained`` argument for the dtype: 4.56 renamed ``torch_dtype`` to ``dtype`` (5.x deprecates the
    old name)."""
    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def cache_kwarg(model: Any) -> str:
    """The forward argument that takes a key/value cache: ``cache`` in 5.x, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def cache_layers(cache: Any) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """Per-layer (keys, values) of a model's returned cache, each (1, kv_heads, P, head_dim)."""
    if hasattr(cache, "layers"):  # 4.54+: DynamicCache.layers[i].keys / .values
        return tuple((layer.keys, layer.values) for layer in cache.layers)
    if hasattr(cache, "key_cache"):  # 4.46-4.53: DynamicCache.key_cache / value_cache lists
        return tuple(zip(cache.key_cache, cache.value_cache, strict=True))
    return tuple((k, v) for k, v, *_ in cache)  # the legacy tuple of (keys, values) per layer


def new_cache(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A ``DynamicCache`` holding ``layers`` (per layer (keys, values), each (B, kv_heads, P, head_dim))."""
    if "ddp_cache_data" in inspect.signature(DynamicCache.__init__).parameters:  # 4.5x+, 5.x
        return DynamicCache(layers)
    return DynamicCache.from_legacy_cache(tuple(layers))  # type: ignore[attr-defined]  # 4.46-4.5x (gone in 5.x)


def rotary_embedding(model: Any) -> Any:
    """The model's rotary embedding module: one on the model since 4.48, one per attention module in 4.46-4.47."""
    rotary = getattr(model, "rotary_emb", None)
    if rotary is not None:
        return rotary
    layers = getattr(model, "layers", None)
    return getattr(getattr(layers[0], "self_attn", None), "rotary_emb", None) if layers else None


def attention_implementation(model: Any) -> str:
    """The attention implementation a loaded model runs with (``sdpa``, ``eager``, ``flash_attention_2``): the
    config's private ``_attn_implementation``, the one spelling 4.46 to 5.x all have."""
    return str(model.config._attn_implementation)
