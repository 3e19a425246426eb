"""What bge-icl needs of a loaded model, typed: :class:`DecoderModel` (any transformers base model it runs) and
:class:`LlamaLayout` (the Llama/Mistral decoder layout the shared-prefix path runs layer by layer).

Protocols, so transformers' classes (``MistralModel``, ``LlamaModel``) match without importing them here; the hot
path (:mod:`bge_icl.forward`, :mod:`bge_icl.loading`) is typed by them instead of ``Any``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch


class DecoderModel(Protocol):
    """A transformers base model: called with ``input_ids`` (B, T) and friends, returns ``last_hidden_state``."""

    config: Any
    """Its ``PretrainedConfig`` (``hidden_size``, ``num_attention_heads``, ``sliding_window``, ``name_or_path``...)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The forward pass (``input_ids``, ``attention_mask``, ``position_ids``, ``use_cache``, a cache)."""
        ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]:
        """Its weights (the first one tells the device and dtype)."""
        ...


class LlamaLayout(DecoderModel, Protocol):
    """A :class:`DecoderModel` with the Llama/Mistral decoder layout (``bge_icl.forward.supports_shared_prefix``)."""

    embed_tokens: Any
    layers: Sequence[Any]
    norm: Any
