"""``BgeIclEmbeddings``: bge-en-icl's few-shot query embeddings behind LangChain's ``Embeddings``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from langchain_core.embeddings import Embeddings

from bge_icl.inputs import as_one_text, as_text_batch
from bge_icl_client.adapter import ServedModel

if TYPE_CHECKING:
    from langchain_classic.embeddings import CacheBackedEmbeddings
    from langchain_core.stores import ByteStore


class BgeIclEmbeddings(ServedModel, Embeddings):
    """BAAI/bge-en-icl embeddings for LangChain: few-shot (in-context) queries, plain passages.

    A drop-in for ``HuggingFaceEmbeddings``: ``embed_documents`` encodes passages as they are and
    ``embed_query`` puts the task's examples and instruction before the query, so any retriever or
    vector store gets bge-en-icl's asymmetric embeddings. The fields are bge-icl's options
    (:class:`bge_icl.options.EmbedderOptions`, each with its doc), fixed once built; instances with the
    same model, device, dtype and attention share one set of loaded weights, and so do
    :meth:`from_embedder`, :meth:`with_options` and :meth:`with_examples`.

    Example:
        >>> from langchain_core.vectorstores import InMemoryVectorStore  # doctest: +SKIP
        >>> embeddings = BgeIclEmbeddings(
        ...     model="BAAI/bge-en-icl",
        ...     examples_for_task=[{"instruct": task, "query": "what is a virtual interface",
        ...                         "response": "A virtual interface is a software-defined abstraction ..."}],
        ...     query_instruction_for_retrieval=task,
        ... )  # doctest: +SKIP
        >>> store = InMemoryVectorStore.from_texts(passages, embedding=embeddings)  # doctest: +SKIP
        >>> store.as_retriever(search_kwargs={"k": 4}).invoke("how much protein should a female eat")  # doctest: +SKIP
    """

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed passages as they are (no examples, no instruction).

        Raises:
            TypeError: ``texts`` is a single str (or bytes, a dict, not iterable), or an item is not a str;
                the message names the item's index and type.
            ValueError: An item holds a lone surrogate.
        """
        return self._embedder.encode_corpus(as_text_batch(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed a query after the few-shot examples and the task instruction.

        Raises:
            TypeError: ``text`` is not a str. ValueError: it holds a lone surrogate.
        """
        return self._embedder.encode_queries([as_one_text(text, "query")])[0].tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """:meth:`embed_documents` for asyncio: concurrent calls share forward passes (the core's scheduler); the
        event loop keeps running, and cancelling the task drops the passages that have not run."""
        return (await self._embedder.aembed(as_text_batch(texts), "passages")).vectors.tolist()

    async def aembed_query(self, text: str) -> list[float]:
        """:meth:`embed_query` for asyncio: concurrent queries share forward passes; the event loop keeps running."""
        return (await self._embedder.aembed([as_one_text(text, "query")], "queries")).vectors[0].tolist()

    def cached(
        self, document_store: ByteStore, query_store: ByteStore | None = None, *, batch_size: int | None = None
    ) -> CacheBackedEmbeddings:
        """These embeddings behind LangChain's ``CacheBackedEmbeddings``, with query and passage vectors kept apart.

        See :func:`langchain_bge_icl.cache_backed_embeddings`; needs ``pip install 'bge-icl[langchain-cache]'``.
        """
        from langchain_bge_icl.cache import cache_backed_embeddings

        return cache_backed_embeddings(self, document_store, query_store, batch_size=batch_size)
