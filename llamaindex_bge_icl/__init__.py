"""LlamaIndex adapter for bge-icl: ``BgeIclEmbedding``, a ``BaseEmbedding`` with few-shot query embeddings.

Example:
    >>> from llama_index.core import Settings  # doctest: +SKIP
    >>> from llamaindex_bge_icl import BgeIclEmbedding  # doctest: +SKIP
    >>> Settings.embed_model = BgeIclEmbedding(model_name="BAAI/bge-en-icl", examples_for_task=[...])  # doctest: +SKIP
"""

from __future__ import annotations

try:
    import llama_index.core  # noqa: F401
except ImportError as e:
    msg = (
        f"llamaindex_bge_icl needs llama-index-core, which could not be imported ({e}); "
        "install it with: pip install 'bge-icl[llamaindex]'"
    )
    raise ImportError(msg) from e

from llamaindex_bge_icl.embeddings import QUERY_CACHE_COLLECTION, BgeIclEmbedding

__all__ = ["QUERY_CACHE_COLLECTION", "BgeIclEmbedding"]
