"""LangChain adapter for bge-icl: ``BgeIclEmbeddings``, a drop-in for ``HuggingFaceEmbeddings``.

Example:
    >>> from langchain_bge_icl import BgeIclEmbeddings  # doctest: +SKIP
    >>> embeddings = BgeIclEmbeddings(model="BAAI/bge-en-icl", examples_for_task=[...])  # doctest: +SKIP
    >>> len(embeddings.embed_query("how much protein should a female eat"))  # doctest: +SKIP
    4096
"""

from __future__ import annotations

from bge_icl.optional import missing_extra

try:
    import langchain_core  # noqa: F401
except ImportError as e:
    raise missing_extra("langchain_core", "langchain", "langchain_bge_icl", e) from e

from langchain_bge_icl.cache import cache_backed_embeddings, cache_namespaces
from langchain_bge_icl.embeddings import BgeIclEmbeddings

__all__ = ["BgeIclEmbeddings", "cache_backed_embeddings", "cache_namespaces"]
