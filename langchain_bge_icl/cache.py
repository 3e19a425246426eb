"""LangChain's ``CacheBackedEmbeddings`` for bge-en-icl, with query and passage vectors kept apart.

Stock ``CacheBackedEmbeddings.from_bytes_store(..., query_embedding_cache=True)`` keys a vector by the
text alone and reuses the document store for queries: with bge-en-icl, whose query vector of a text
differs from its passage vector, that serves passage vectors for queries. :func:`cache_backed_embeddings`
builds a real ``CacheBackedEmbeddings`` (from ``langchain-classic``) whose key encoders put a passage or
query namespace (see :func:`cache_namespaces`) before the text's sha256, so one ``ByteStore`` holds both
kinds safely and a change of examples, instruction or lengths never serves a stale vector.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from bge_icl import ICLEmbedder
from bge_icl.inputs import as_one_text, as_text_batch
from bge_icl.optional import missing_extra

if TYPE_CHECKING:
    from langchain_classic.embeddings import CacheBackedEmbeddings
    from langchain_classic.storage.encoder_backed import EncoderBackedStore
    from langchain_core.embeddings import Embeddings
    from langchain_core.stores import ByteStore


def cache_namespaces(embedder: ICLEmbedder) -> tuple[str, str]:
    """The key prefixes for ``embedder``'s passage and query vectors, from :meth:`ICLEmbedder.fingerprint`.

    Changing the examples therefore misses the query cache but keeps the passage cache; ``ckpt`` and
    ``ckpt/`` (one resolved directory) share both. Keys use only ``[a-z0-9/-]``, so file-backed stores accept them.

    Returns:
        ``(passage_namespace, query_namespace)``, e.g. ``("bge-icl/passage/<sha256>/", ...)``.
    """
    return f"bge-icl/passage/{embedder.fingerprint('passages')}/", f"bge-icl/query/{embedder.fingerprint('queries')}/"


def _key_encoder(namespace: str) -> Callable[[str], str]:
    def encode(text: str) -> str:
        return namespace + hashlib.sha256(text.encode("utf-8")).hexdigest()

    return encode


def _serialize(vector: list[float]) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()  # the model's float32 values, exactly


def _deserialize(data: bytes) -> list[float]:
    return np.frombuffer(data, dtype="<f4").tolist()


def _classic() -> tuple[type[CacheBackedEmbeddings], type[EncoderBackedStore[str, list[float]]]]:
    try:
        from langchain_classic.embeddings import CacheBackedEmbeddings
        from langchain_classic.storage.encoder_backed import EncoderBackedStore
    except ImportError as e:
        raise missing_extra("langchain_classic", "langchain-cache", "the bge-icl cache", e) from e
    return CacheBackedEmbeddings, EncoderBackedStore


@functools.cache
def _checked(base: type[CacheBackedEmbeddings]) -> type[CacheBackedEmbeddings]:
    class CachedBgeIclEmbeddings(base):  # type: ignore[valid-type,misc]
        """``CacheBackedEmbeddings`` that checks its inputs first and embeds a repeated passage once."""

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            texts = as_text_batch(texts)
            unique = list(dict.fromkeys(texts))
            vectors = dict(zip(unique, super().embed_documents(unique), strict=True))
            return [vectors[t] for t in texts]

        async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
            texts = as_text_batch(texts)
            unique = list(dict.fromkeys(texts))
            vectors = dict(zip(unique, await super().aembed_documents(unique), strict=True))
            return [vectors[t] for t in texts]

        def embed_query(self, text: str) -> list[float]:
            return super().embed_query(as_one_text(text, "query"))

        async def aembed_query(self, text: str) -> list[float]:
            return await super().aembed_query(as_one_text(text, "query"))

    return CachedBgeIclEmbeddings


def cache_backed_embeddings(
    embeddings: Embeddings,
    document_store: ByteStore,
    query_store: ByteStore | None = None,
    *,
    batch_size: int | None = None,
) -> CacheBackedEmbeddings:
    """``embeddings`` behind LangChain's ``CacheBackedEmbeddings``, with query and passage vectors kept apart.

    Args:
        embeddings: The :class:`~langchain_bge_icl.BgeIclEmbeddings` to cache.
        document_store: Where passage vectors go (e.g. ``InMemoryByteStore``, ``LocalFileStore``).
        query_store: Where query vectors go; None = ``document_store``, under the query namespace.
        batch_size: Passages embedded between two store writes; None = all missing at once.

    Returns:
        A ``langchain_classic.embeddings.CacheBackedEmbeddings`` whose keys are
        ``bge-icl/{passage|query}/{settings sha256}/{text sha256}`` and whose values are float32 bytes.

    Raises:
        ImportError: ``langchain-classic`` is not installed.
        TypeError: ``embeddings`` is not a ``BgeIclEmbeddings``.
        ValueError: ``batch_size`` is not a positive int or None.
    """
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0):
        msg = f"batch_size must be a positive int or None, got {batch_size!r}"
        raise ValueError(msg)
    embedder = getattr(embeddings, "embedder", None)
    if not isinstance(embedder, ICLEmbedder):
        msg = f"cache_backed_embeddings() takes a BgeIclEmbeddings, got {type(embeddings).__name__}"
        raise TypeError(msg)
    base, encoder_backed = _classic()
    passage_namespace, query_namespace = cache_namespaces(embedder)

    def store(byte_store: ByteStore, namespace: str) -> EncoderBackedStore[str, list[float]]:
        return encoder_backed(byte_store, _key_encoder(namespace), _serialize, _deserialize)

    return _checked(base)(
        embeddings,
        document_embedding_store=store(document_store, passage_namespace),
        query_embedding_store=store(document_store if query_store is None else query_store, query_namespace),
        batch_size=batch_size,
    )
