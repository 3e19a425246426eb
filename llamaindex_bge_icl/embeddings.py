"""``BgeIclEmbedding``: bge-en-icl few-shot embeddings as a LlamaIndex ``BaseEmbedding``."""

from __future__ import annotations

from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from bge_icl.inputs import as_one_text, as_text_batch
from bge_icl_client.adapter import ServedModel

QUERY_CACHE_COLLECTION = "bge_icl_query_embeddings"
"""The ``embeddings_cache`` collection that holds query vectors (passages stay in ``"embeddings"``)."""
EMBED_BATCH_SIZE = 64
"""``embed_batch_size``'s default here (LlamaIndex's is 10, too few for the core's token-budget batching)."""


class _QueryCacheView:
    """The ``embeddings_cache`` that BaseEmbedding's query path sees: the user's store, query keys apart.

    BaseEmbedding keys queries and passages by their raw text in one ``"embeddings"`` collection, but
    bge-en-icl embeds a query (with its few-shot prefix) and a passage with the same text differently.
    Queries go to :data:`QUERY_CACHE_COLLECTION` under a key that also names the prompt.
    """

    def __init__(self, store: Any, key_prefix: str) -> None:
        self._store = store
        self._key_prefix = key_prefix

    def get(self, key: str, collection: str = "") -> dict | None:
        return self._store.get(key=self._key_prefix + key, collection=QUERY_CACHE_COLLECTION)

    def put(self, key: str, val: dict, collection: str = "") -> None:
        self._store.put(key=self._key_prefix + key, val=val, collection=QUERY_CACHE_COLLECTION)

    async def aget(self, key: str, collection: str = "") -> dict | None:
        return await self._store.aget(key=self._key_prefix + key, collection=QUERY_CACHE_COLLECTION)

    async def aput(self, key: str, val: dict, collection: str = "") -> None:
        await self._store.aput(key=self._key_prefix + key, val=val, collection=QUERY_CACHE_COLLECTION)


class BgeIclEmbedding(ServedModel, BaseEmbedding):
    """BAAI/bge-en-icl embeddings for LlamaIndex: few-shot (in-context) queries, plain passages.

    Queries get the few-shot examples and the task instruction; passages (node text in
    ``MetadataMode.EMBED``) are embedded as they are. The options are :class:`bge_icl.ICLEmbedder`'s;
    the loaded weights live in bge-icl's process-wide registry, so instances with the same model,
    device, dtype and attention settings (LangChain adapters included) share one copy.

    Calls put their rows in the core's queue (sync calls wait, async calls await without blocking the event loop),
    and concurrent calls on one model share forward passes (:mod:`bge_icl.scheduler`).
    ``get_text_embedding_batch`` hands the whole list to one core call (tokenized once, one truncation report), and
    the core sorts it by length and splits it into forward passes by ``batch_size`` and ``max_batch_tokens``;
    ``embed_batch_size`` (:data:`EMBED_BATCH_SIZE` by default) only sizes LlamaIndex's chunks (its events, cache
    writes) and the calls of LlamaIndex's other batch paths.

    With ``embeddings_cache`` set, passages are cached as in LlamaIndex (raw text keys in the
    ``"embeddings"`` collection) and queries in :data:`QUERY_CACHE_COLLECTION` under a key that also
    names the prompt (:meth:`bge_icl.ICLEmbedder.fingerprint`), so a query never reads a passage's
    vector, nor one made with other examples.

    The bge-icl options (:class:`bge_icl.options.EmbedderOptions`) are fixed once built; LlamaIndex's own
    fields (``embed_batch_size``, ``callback_manager``, ``embeddings_cache``, ...) stay assignable.

    Example:
        >>> from llama_index.core import Settings, VectorStoreIndex, Document  # doctest: +SKIP
        >>> from bge_icl import WEB_SEARCH_INSTRUCTION  # doctest: +SKIP
        >>> Settings.embed_model = BgeIclEmbedding(
        ...     model_name="BAAI/bge-en-icl",
        ...     examples_for_task=examples,
        ...     query_instruction_for_retrieval=WEB_SEARCH_INSTRUCTION,
        ... )  # doctest: +SKIP
        >>> index = VectorStoreIndex.from_documents([Document(text="...")])  # doctest: +SKIP
        >>> index.as_retriever(similarity_top_k=3).retrieve("how much protein should a female eat")  # doctest: +SKIP
    """

    embed_batch_size: int = Field(
        default=EMBED_BATCH_SIZE,
        gt=0,
        le=2048,
        description="Texts per core call; the core splits them into forward passes by its token budget.",
    )
    _answers: dict[str, Embedding] | None = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        """The name LlamaIndex stores in ``to_dict()`` output."""
        return "BgeIclEmbedding"

    # -- BaseEmbedding hooks ------------------------------------------------------------------

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embedder.encode_queries([query])[0].tolist()

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._embedder.encode_corpus([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        if self._answers is not None:  # a view of get_text_embedding_batch: the whole batch is embedded already
            return [self._answers[text] for text in texts]
        return self._embedder.encode_corpus(texts).tolist()

    # Async hooks: rows join the core's scheduler, so concurrent calls (and the chunks of one batch, which LlamaIndex
    # gathers at once) share forward passes; cancelling the task drops the rows that have not run.

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return (await self._embedder.aembed([query], "queries")).vectors[0].tolist()

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await self._embedder.aembed([text], "passages")).vectors[0].tolist()

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        if self._answers is not None:
            return [self._answers[text] for text in texts]
        return (await self._embedder.aembed(texts, "passages")).vectors.tolist()

    # -- query-side cache keys ------------------------------------------------------------------

    def _query_side(self) -> BgeIclEmbedding:
        if self.embeddings_cache is None:
            return self
        view = _QueryCacheView(self.embeddings_cache, f"bge-icl:{self._embedder.fingerprint('queries')[:32]}:")
        return self.model_copy(update={"embeddings_cache": view})  # shallow: same encoder, same callbacks

    def get_query_embedding(self, query: str) -> Embedding:
        """Embed one query with the few-shot prompt (cached apart from passages, see the class docs).

        Raises:
            TypeError: ``query`` is not a str. ValueError: it holds a lone surrogate.
        """
        return super(BgeIclEmbedding, self._query_side()).get_query_embedding(as_one_text(query, "query"))

    async def aget_query_embedding(self, query: str) -> Embedding:
        """Async :meth:`get_query_embedding`; concurrent queries share forward passes."""
        return await super(BgeIclEmbedding, self._query_side()).aget_query_embedding(as_one_text(query, "query"))

    # -- input checks before LlamaIndex's cache lookups and embed_batch_size chunking -------------
    # (otherwise a bad item fails inside a cache store with an unrelated message, or the core names
    # its index within one chunk instead of within the caller's list)

    def get_text_embedding(self, text: str) -> Embedding:
        """Embed one passage as it is.

        Raises:
            TypeError: ``text`` is not a str. ValueError: it holds a lone surrogate.
        """
        return super().get_text_embedding(as_one_text(text))

    async def aget_text_embedding(self, text: str) -> Embedding:
        """Async :meth:`get_text_embedding`; concurrent calls share forward passes."""
        return await super().aget_text_embedding(as_one_text(text))

    def _answering(self, texts: list[str], vectors: Any) -> BgeIclEmbedding:
        """A view that answers LlamaIndex's ``embed_batch_size`` chunks of ``texts`` from ``vectors`` (N, d)."""
        view = self.model_copy()  # shallow: same encoder, same callbacks and cache; its own private answers
        view._answers = dict(zip(texts, vectors.tolist(), strict=True))
        return view

    def get_text_embedding_batch(self, texts: list[str], show_progress: bool = False, **kwargs: Any) -> list[Embedding]:
        """Embed passages: one core call for the whole list (tokenized once, one truncation report naming indices in
        ``texts``), then LlamaIndex's ``embed_batch_size`` chunks (events, cache) take their rows from it.

        Raises:
            TypeError: ``texts`` is a single str (or bytes, a dict, not iterable), or an item is not a str;
                the message names the item's index in ``texts`` and its type.
            ValueError: An item holds a lone surrogate.
        """
        texts = as_text_batch(texts)
        view = self._answering(texts, self._embedder.embed(texts, "passages").vectors)
        return super(BgeIclEmbedding, view).get_text_embedding_batch(texts, show_progress=show_progress, **kwargs)

    async def aget_text_embedding_batch(
        self, texts: list[str], show_progress: bool = False, **kwargs: Any
    ) -> list[Embedding]:
        """Async :meth:`get_text_embedding_batch`; cancelling drops the rows that have not run."""
        texts = as_text_batch(texts)
        view = self._answering(texts, (await self._embedder.aembed(texts, "passages")).vectors)
        return await super(BgeIclEmbedding, view).aget_text_embedding_batch(texts, show_progress=show_progress,
                                                                            **kwargs)  # fmt: skip
