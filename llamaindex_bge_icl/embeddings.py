"""``BgeIclEmbedding``: bge-en-icl few-shot embeddings as a LlamaIndex ``BaseEmbedding``."""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_validator

from bge_icl import ICLEmbedder
from bge_icl.encoder import OnTruncation
from bge_icl.inputs import as_one_text, as_text_batch
from bge_icl.prompts import DEFAULT_EXAMPLES_INSTRUCTION_FORMAT, DEFAULT_QUERY_INSTRUCTION_FORMAT, DEFAULT_SUFFIX

QUERY_CACHE_COLLECTION = "bge_icl_query_embeddings"
"""The ``embeddings_cache`` collection that holds query vectors (passages stay in ``"embeddings"``)."""

_EMBEDDER_CONTEXT = "bge_icl_embedder"  # validation-context key: from_embedder() hands its ICLEmbedder over

# Fields passed to ICLEmbedder under the same name (``model_name`` becomes ``model_name_or_path``).
_CORE_FIELDS = (
    "examples_for_task",
    "query_instruction_for_retrieval",
    "query_instruction_format",
    "examples_instruction_format",
    "suffix",
    "query_max_length",
    "passage_max_length",
    "normalize_embeddings",
    "devices",
    "dtype",
    "batch_size",
    "max_batch_tokens",
    "attn_implementation",
    "prefix_cache",
    "on_truncation",
    "show_progress",
    "trust_remote_code",
    "cache_dir",
    "revision",
    "use_fp16",
    "use_bf16",
)


# Set while get_text_embedding_batch runs its embed_batch_size chunks (truncation already reported for the call).
_BATCH_CHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar("bge_icl_batch_checked", default=False)


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


class BgeIclEmbedding(BaseEmbedding):
    """BAAI/bge-en-icl embeddings for LlamaIndex: few-shot (in-context) queries, plain passages.

    Queries get the few-shot examples and the task instruction; passages (node text in
    ``MetadataMode.EMBED``) are embedded as they are. The options are :class:`bge_icl.ICLEmbedder`'s;
    the loaded weights live in bge-icl's process-wide registry, so instances with the same model,
    device, dtype and attention settings (LangChain adapters included) share one copy.

    Sync calls run on the calling thread; async calls run in a worker thread
    (:func:`asyncio.to_thread`) so the event loop keeps running. Calls on one model are serialized by
    the model's lock; ``embed_batch_size`` texts go to each call and the core splits them into forward
    passes by ``batch_size`` and ``max_batch_tokens``.

    With ``embeddings_cache`` set, passages are cached as in LlamaIndex (raw text keys in the
    ``"embeddings"`` collection) and queries in :data:`QUERY_CACHE_COLLECTION` under a key that also
    names the prompt (examples, instruction, formats), so a query never reads a passage's vector, nor
    one made with other examples.

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

    model_name: str = Field(
        default="BAAI/bge-en-icl",
        description="Hugging Face hub id or local directory of the model, loaded with from_pretrained.",
    )
    embed_batch_size: int = Field(
        default=64,
        description="Texts handed to one encode call; the core splits them into forward passes by "
        "batch_size and max_batch_tokens, longest first.",
        gt=0,
        le=2048,
    )
    examples_for_task: list[dict[str, str]] | None = Field(
        default=None,
        description="Few-shot examples put before every query, each {'instruct'?, 'query', 'response'}; "
        "None = zero-shot.",
    )
    query_instruction_for_retrieval: str | None = Field(
        default=None, description="Task instruction put before each query; None = the query as is."
    )
    query_instruction_format: str = Field(
        default=DEFAULT_QUERY_INSTRUCTION_FORMAT, description="Query template with two '{}': instruction, query."
    )
    examples_instruction_format: str = Field(
        default=DEFAULT_EXAMPLES_INSTRUCTION_FORMAT,
        description="Example template with three '{}': instruction, query, response.",
    )
    suffix: str = Field(default=DEFAULT_SUFFIX, description="Appended after each query, before EOS.")
    query_max_length: int = Field(
        default=512, gt=0, description="Token limit for a query, without the examples prefix."
    )
    passage_max_length: int = Field(
        default=512, gt=0, description="Token limit for a passage, special tokens included."
    )
    normalize_embeddings: bool = Field(default=True, description="L2-normalize the vectors.")
    devices: str | int | list[str] | list[int] | None = Field(
        default=None,
        description=(
            "None = first CUDA GPU else CPU; 0 or [0] = cuda:0; 'cpu', 'cuda:1'; a list = one replica per entry; "
            "'auto' = every visible GPU."
        ),
    )
    dtype: str = Field(
        default="auto",
        description="'auto' (float16 on GPU, float32 on CPU), 'float16', 'bfloat16' or 'float32'; "
        "a torch.dtype is stored by name.",
    )
    batch_size: int = Field(default=32, gt=0, description="Most texts per forward pass.")
    max_batch_tokens: int | None = Field(
        default=None, gt=0, description="Most padded tokens per forward pass; None = 65,536 on GPU, 16,384 on CPU."
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] | None = Field(
        default=None, description="Attention kernels; None = flash_attention_2 on GPU when installed, else sdpa."
    )
    prefix_cache: bool = Field(
        default=True,
        description="Run the constant few-shot prefix once and reuse its keys/values for every query "
        "(same vectors, less compute); False always runs the whole prompt.",
    )
    on_truncation: Literal["warn", "error", "ignore"] = Field(
        default="warn", description="What to do when texts are cut to their max length."
    )
    show_progress: bool | None = Field(
        default=None, description="Core progress bar; None = only when a call needs more than one forward pass."
    )
    trust_remote_code: bool = Field(default=False, description="Passed to from_pretrained.")
    cache_dir: str | None = Field(default=None, description="Passed to from_pretrained.")
    revision: str | None = Field(default=None, description="Passed to from_pretrained.")
    use_fp16: bool | None = Field(
        default=None, description="FlagEmbedding compatibility: False = float32; only with dtype='auto'."
    )
    use_bf16: bool | None = Field(
        default=None, description="FlagEmbedding compatibility: True = bfloat16 on GPU; only with dtype='auto'."
    )

    _embedder: ICLEmbedder = PrivateAttr()
    _query_key_prefix: str = PrivateAttr()

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype_name(cls, value: Any) -> Any:
        return str(value).removeprefix("torch.") if isinstance(value, torch.dtype) else value

    @field_validator("devices", mode="before")
    @classmethod
    def _device_name(cls, value: Any) -> Any:
        if isinstance(value, torch.device):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [str(d) if isinstance(d, torch.device) else d for d in value]
        return value

    def model_post_init(self, context: Any, /) -> None:
        """Build the encoder: the one :meth:`from_embedder` hands over, else load (or reuse) the model."""
        given = context.get(_EMBEDDER_CONTEXT) if isinstance(context, Mapping) else None
        if given is None:
            given = ICLEmbedder(self.model_name, **{name: getattr(self, name) for name in _CORE_FIELDS})
        self._embedder = given
        prompt = [
            self.model_name,
            self._embedder.prefix,
            self.query_instruction_for_retrieval,
            self._embedder.query_instruction_format,
            self.suffix,
            self.query_max_length,
            self.normalize_embeddings,
            str(self._embedder.dtype),
            self.revision,
        ]
        digest = hashlib.sha256(json.dumps(prompt).encode("utf-8")).hexdigest()[:16]
        self._query_key_prefix = f"bge-icl:{digest}:"

    @classmethod
    def class_name(cls) -> str:
        """The name LlamaIndex stores in ``to_dict()`` output."""
        return "BgeIclEmbedding"

    @classmethod
    def from_embedder(cls, embedder: ICLEmbedder, **kwargs: Any) -> BgeIclEmbedding:
        """Wrap an existing :class:`~bge_icl.ICLEmbedder`, sharing its loaded weights.

        Args:
            embedder: The core embedder; it becomes this instance's encoder and its options its fields.
            **kwargs: LlamaIndex fields only: ``embed_batch_size``, ``embeddings_cache``,
                ``callback_manager``, ``num_workers``, ``rate_limiter``.

        Returns:
            A ``BgeIclEmbedding`` that encodes with ``embedder`` itself.

        Raises:
            TypeError: ``embedder`` is not an ``ICLEmbedder``.
            ValueError: ``kwargs`` names a model option.
        """
        if not isinstance(embedder, ICLEmbedder):
            msg = f"from_embedder() takes a bge_icl.ICLEmbedder, got {type(embedder).__name__}"
            raise TypeError(msg)
        llamaindex_fields = sorted(set(BaseEmbedding.model_fields) - {"model_name"})
        model_options = sorted(set(kwargs) - set(llamaindex_fields))
        if model_options:
            msg = (
                f"from_embedder() takes the model options from the embedder, got {model_options}; valid keyword "
                f"arguments: {llamaindex_fields}. Use embedder.with_examples(...) or BgeIclEmbedding(...) instead"
            )
            raise ValueError(msg)
        options = embedder.options
        options["model_name"] = options.pop("model_name_or_path")
        return cls.model_validate({**options, **kwargs}, context={_EMBEDDER_CONTEXT: embedder})

    @property
    def embedder(self) -> ICLEmbedder:
        """The core :class:`~bge_icl.ICLEmbedder` (for LangChain adapters' ``from_embedder`` and direct use)."""
        return self._embedder

    @property
    def dimension(self) -> int:
        """Size of each embedding (4096 for bge-en-icl)."""
        return self._embedder.dimension

    def with_examples(self, examples_for_task: Sequence[Mapping[str, str]] | None) -> BgeIclEmbedding:
        """A new instance with other few-shot examples that shares this one's loaded weights.

        Args:
            examples_for_task: The new examples; None = zero-shot.
        """
        fields = {name: getattr(self, name) for name in BaseEmbedding.model_fields if name != "model_name"}
        return self.from_embedder(self._embedder.with_examples(examples_for_task), **fields)

    # -- BaseEmbedding hooks ------------------------------------------------------------------

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embedder.encode_queries([query])[0].tolist()

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._embedder.encode_corpus([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        # Inside get_text_embedding_batch the whole batch was already checked for truncation once.
        mode: OnTruncation | None = "ignore" if _BATCH_CHECKED.get() else None
        return self._embedder.encode_corpus(texts, on_truncation=mode).tolist()

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)

    # -- query-side cache keys ------------------------------------------------------------------

    def _query_side(self) -> BgeIclEmbedding:
        if self.embeddings_cache is None:
            return self
        view = _QueryCacheView(self.embeddings_cache, self._query_key_prefix)
        return self.model_copy(update={"embeddings_cache": view})  # shallow: same encoder, same callbacks

    def get_query_embedding(self, query: str) -> Embedding:
        """Embed one query with the few-shot prompt (cached apart from passages, see the class docs).

        Raises:
            TypeError: ``query`` is not a str. ValueError: it holds a lone surrogate.
        """
        return super(BgeIclEmbedding, self._query_side()).get_query_embedding(as_one_text(query, "query"))

    async def aget_query_embedding(self, query: str) -> Embedding:
        """Async :meth:`get_query_embedding`; the forward pass runs in a worker thread."""
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
        """Async :meth:`get_text_embedding`; the forward pass runs in a worker thread."""
        return await super().aget_text_embedding(as_one_text(text))

    def get_text_embedding_batch(self, texts: list[str], show_progress: bool = False, **kwargs: Any) -> list[Embedding]:
        """Embed passages in chunks of ``embed_batch_size``; every item is checked before the first chunk runs.

        Raises:
            TypeError: ``texts`` is a single str (or bytes, a dict, not iterable), or an item is not a str;
                the message names the item's index in ``texts`` and its type.
            ValueError: An item holds a lone surrogate.
        """
        texts = as_text_batch(texts)
        self._embedder.check_truncation(texts, "passages")  # one warning (or error) per call, not per chunk
        token = _BATCH_CHECKED.set(True)
        try:
            return super().get_text_embedding_batch(texts, show_progress=show_progress, **kwargs)
        finally:
            _BATCH_CHECKED.reset(token)

    async def aget_text_embedding_batch(
        self, texts: list[str], show_progress: bool = False, **kwargs: Any
    ) -> list[Embedding]:
        """Async :meth:`get_text_embedding_batch`; the forward passes run in worker threads."""
        texts = as_text_batch(texts)
        self._embedder.check_truncation(texts, "passages")
        token = _BATCH_CHECKED.set(True)  # copied into the chunk tasks and their worker threads
        try:
            return await super().aget_text_embedding_batch(texts, show_progress=show_progress, **kwargs)
        finally:
            _BATCH_CHECKED.reset(token)

    def __getstate__(self) -> dict[str, Any]:
        # Pickle the configuration only (never the weights); unpickling reloads them or reuses the registry's.
        clone = self.model_copy()
        clone.__pydantic_private__ = {}
        return super(BgeIclEmbedding, clone).__getstate__()
