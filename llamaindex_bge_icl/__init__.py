"""LlamaIndex adapter for bge-icl: ``BgeIclEmbedding``, a ``BaseEmbedding`` with few-shot query embeddings.

Example:
    >>> from llama_index.core import Settings  # doctest: +SKIP
    >>> from llamaindex_bge_icl import BgeIclEmbedding  # doctest: +SKIP
    >>> Settings.embed_model = BgeIclEmbedding(model_name="BAAI/bge-en-icl", examples_for_task=[...])  # doctest: +SKIP
"""

from __future__ import annotations

from bge_icl.optional import missing_extra

try:
    import llama_index.core  # noqa: F401
except ImportError as e:
    raise missing_extra("llama_index.core", "llamaindex", "llamaindex_bge_icl", e) from e

from llamaindex_bge_icl.embeddings import QUERY_CACHE_COLLECTION, BgeIclEmbedding

__all__ = ["QUERY_CACHE_COLLECTION", "BgeIclEmbedding"]
