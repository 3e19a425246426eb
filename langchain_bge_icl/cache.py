"""Cache bge-en-icl vectors in a LangChain ``ByteStore``, with query and passage vectors kept apart.

LangChain's ``CacheBackedEmbeddings`` keys a vector by the text alone, and its
``query_embedding_cache=True`` reuses the document store: with bge-en-icl, whose query vector of a
text differs from its passage vector, that serves passage vectors for queries. It also ships in
``langchain-classic``, not ``langchain-core``. :class:`CachedBgeIclEmbeddings` follows the same
store protocol (``mget``/``mset`` on any ``ByteStore``) with keys that name the kind of text and
a hash of every setting that changes the vector.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import numpy as np
from langchain_core.embeddings import Embeddings
from langchain_core.utils.iter import batch_iterate

from bge_icl import ICLEmbedder
from bge_icl.inputs import as_one_text, as_text_batch

if TYPE_CHECKING:
    from langchain_core.stores import ByteStore

    from langchain_bge_icl.embeddings import BgeIclEmbeddings


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def cache_namespaces(embedder: ICLEmbedder) -> tuple[str, str]:
    """The key prefixes for ``embedder``'s passage and query vectors.

    The passage namespace hashes the model, revision, dtype, dimension, normalization and
    ``passage_max_length``; the query namespace hashes those (less ``passage_max_length``) plus the
    few-shot prefix, instruction, templates, suffix and ``query_max_length``. Changing the examples
    therefore misses the query cache but keeps the passage cache. Keys use only ``[a-z0-9/-]``, so
    file-backed stores accept them.

    Returns:
        ``(passage_namespace, query_namespace)``, e.g. ``("bge-icl/passage/<sha256>/", ...)``.
    """
    model = {
        "model": embedder.model_name_or_path,
        "revision": embedder.options.get("revision"),
        "dtype": str(embedder.dtype),
        "dimension": embedder.dimension,
        "normalize": embedder.normalize_embeddings,
    }
    passage = {**model, "passage_max_length": embedder.passage_max_length}
    query = {
        **model,
        "prefix": embedder.prefix,
        "instruction": embedder.query_instruction_for_retrieval,
        "query_format": embedder.query_instruction_format,
        "suffix": embedder.suffix,
        "query_max_length": embedder.query_max_length,
    }
    return f"bge-icl/passage/{_digest(passage)}/", f"bge-icl/query/{_digest(query)}/"


def _encode(vector: list[float]) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()  # the model's float32 values, exactly


def _decode(data: bytes) -> list[float]:
    return np.frombuffer(data, dtype="<f4").tolist()


class CachedBgeIclEmbeddings(Embeddings):
    """:class:`~langchain_bge_icl.BgeIclEmbeddings` behind a byte-store cache.

    Build it with :meth:`BgeIclEmbeddings.cached`. Query and passage vectors of the same text never
    collide (see :func:`cache_namespaces`).

    Args:
        embeddings: The embeddings to cache.
        document_store: Where passage vectors go.
        query_store: Where query vectors go; None = ``document_store``.
        batch_size: Passages embedded between two store writes; None = all missing at once.

    Example:
        >>> from langchain_core.stores import InMemoryByteStore  # doctest: +SKIP
        >>> cached = BgeIclEmbeddings(model="BAAI/bge-en-icl").cached(InMemoryByteStore())  # doctest: +SKIP
        >>> cached.embed_documents(["a passage"]) == cached.embed_documents(["a passage"])  # doctest: +SKIP
        True
    """

    def __init__(
        self,
        embeddings: BgeIclEmbeddings,
        document_store: ByteStore,
        query_store: ByteStore | None = None,
        *,
        batch_size: int | None = None,
    ) -> None:
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0
        ):
            msg = f"batch_size must be a positive int or None, got {batch_size!r}"
            raise ValueError(msg)
        self.embeddings = embeddings
        self.document_store = document_store
        self.query_store = document_store if query_store is None else query_store
        self.batch_size = batch_size
        self.document_namespace, self.query_namespace = cache_namespaces(embeddings.embedder)

    def _key(self, namespace: str, text: str) -> str:
        return namespace + hashlib.sha256(text.encode("utf-8")).hexdigest()

    def _split(self, texts: list[str], found: list[bytes | None]) -> tuple[list[list[float] | None], list[str]]:
        vectors = [None if data is None else _decode(data) for data in found]
        missing = list(dict.fromkeys(t for t, v in zip(texts, vectors, strict=True) if v is None))
        return vectors, missing

    def _pairs(self, texts: list[str], vectors: list[list[float]]) -> list[tuple[str, bytes]]:
        return [(self._key(self.document_namespace, t), _encode(v)) for t, v in zip(texts, vectors, strict=True)]

    @staticmethod
    def _merge(texts: list[str], cached: list[list[float] | None], new: dict[str, list[float]]) -> list[list[float]]:
        return [new[t] if v is None else v for t, v in zip(texts, cached, strict=True)]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Passage vectors from the cache; the missing ones are embedded (once per distinct text) and stored."""
        texts = as_text_batch(texts)
        cached, missing = self._split(
            texts, self.document_store.mget([self._key(self.document_namespace, t) for t in texts])
        )
        new: dict[str, list[float]] = {}
        for chunk in batch_iterate(self.batch_size, missing):
            vectors = self.embeddings.embed_documents(chunk)
            self.document_store.mset(self._pairs(chunk, vectors))
            new.update(zip(chunk, vectors, strict=True))
        return self._merge(texts, cached, new)

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async :meth:`embed_documents`; the model runs in a worker thread."""
        texts = as_text_batch(texts)
        keys = [self._key(self.document_namespace, t) for t in texts]
        cached, missing = self._split(texts, await self.document_store.amget(keys))
        new: dict[str, list[float]] = {}
        for chunk in batch_iterate(self.batch_size, missing):
            vectors = await self.embeddings.aembed_documents(chunk)
            await self.document_store.amset(self._pairs(chunk, vectors))
            new.update(zip(chunk, vectors, strict=True))
        return self._merge(texts, cached, new)

    def embed_query(self, text: str) -> list[float]:
        """The query vector from the cache, or embedded with the examples and stored."""
        key = self._key(self.query_namespace, as_one_text(text, "query"))
        (found,) = self.query_store.mget([key])
        if found is not None:
            return _decode(found)
        vector = self.embeddings.embed_query(text)
        self.query_store.mset([(key, _encode(vector))])
        return vector

    async def aembed_query(self, text: str) -> list[float]:
        """Async :meth:`embed_query`; the model runs in a worker thread."""
        key = self._key(self.query_namespace, as_one_text(text, "query"))
        (found,) = await self.query_store.amget([key])
        if found is not None:
            return _decode(found)
        vector = await self.embeddings.aembed_query(text)
        await self.query_store.amset([(key, _encode(vector))])
        return vector
