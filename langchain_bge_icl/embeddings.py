"""``BgeIclEmbeddings``: bge-en-icl's few-shot query embeddings behind LangChain's ``Embeddings``."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator
from typing_extensions import Self

from bge_icl import ICLEmbedder
from bge_icl.encoder import OnTruncation
from bge_icl.inputs import as_one_text, as_text_batch
from bge_icl.loading import DeviceSpec
from bge_icl.prompts import DEFAULT_EXAMPLES_INSTRUCTION_FORMAT, DEFAULT_QUERY_INSTRUCTION_FORMAT, DEFAULT_SUFFIX

if TYPE_CHECKING:
    from langchain_classic.embeddings import CacheBackedEmbeddings
    from langchain_core.stores import ByteStore

_EMBEDDER = "bge_icl_embedder"  # validation-context key that hands an existing ICLEmbedder to model_post_init
_HF_ONLY = {"model_kwargs", "encode_kwargs", "query_encode_kwargs", "multi_process", "cache_folder"}
_HF_HINT = (
    "; HuggingFaceEmbeddings' model_kwargs/encode_kwargs/cache_folder map to options of their own here: "
    "devices=, dtype=, normalize_embeddings=, batch_size=, cache_dir="
)


class BgeIclEmbeddings(BaseModel, Embeddings):
    """BAAI/bge-en-icl embeddings for LangChain: few-shot (in-context) queries, plain passages.

    A drop-in for ``HuggingFaceEmbeddings``: ``embed_documents`` encodes passages as they are and
    ``embed_query`` puts the task's examples and instruction before the query, so any retriever or
    vector store gets bge-en-icl's asymmetric embeddings. Instances with the same model, device,
    dtype and attention share one set of loaded weights, and so do :meth:`from_embedder` and
    :meth:`with_examples`. Options are type-checked strictly and fixed at construction (the model is frozen).

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

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        populate_by_name=True,
        arbitrary_types_allowed=True,
        use_attribute_docstrings=True,
        protected_namespaces=(),
    )

    model_name: str = Field(default="BAAI/bge-en-icl", alias="model")
    """Hub id or local directory of the model (``model=`` works too)."""
    examples_for_task: list[dict[str, str]] | None = None
    """Few-shot examples, each ``{"instruct"?, "query", "response"}``; None = zero-shot."""
    query_instruction_for_retrieval: str | None = None
    """The task instruction put before each query; None = the query as is."""
    query_instruction_format: str = DEFAULT_QUERY_INSTRUCTION_FORMAT
    """Query template with two ``{}``: instruction, query."""
    examples_instruction_format: str = DEFAULT_EXAMPLES_INSTRUCTION_FORMAT
    """Example template with three ``{}``: instruction, query, response."""
    suffix: str = DEFAULT_SUFFIX
    """Appended after each query, before EOS."""
    query_max_length: int = 512
    """Token limit for a query, not counting the examples prefix."""
    passage_max_length: int = 512
    """Token limit for a passage, special tokens included."""
    normalize_embeddings: bool = True
    """L2-normalize the vectors, so inner product is cosine similarity."""
    devices: DeviceSpec = None
    """None = first CUDA GPU else CPU; ``0`` = ``cuda:0``; ``"cpu"``, ``"cuda:1"``; a list = one replica per entry;
    ``"auto"`` = every visible GPU."""
    dtype: str | torch.dtype = "auto"
    """``"auto"`` (float16 on GPU, float32 on CPU), ``"float16"``, ``"bfloat16"`` or ``"float32"``."""
    batch_size: int = 32
    """Most texts per forward pass."""
    max_batch_tokens: int | None = None
    """Most padded tokens per forward pass; None = 65,536 on GPU, 16,384 on CPU."""
    attn_implementation: str | None = None
    """``"sdpa"``, ``"eager"`` or ``"flash_attention_2"``; None = flash-attn 2 on GPU when installed, else sdpa."""
    prefix_cache: bool = True
    """Run the constant few-shot prefix once and reuse its keys/values for every query (same vectors)."""
    on_truncation: OnTruncation = "warn"
    """Texts longer than their max length: ``"warn"``, ``"error"`` or ``"ignore"``."""
    show_progress: bool | None = None
    """Show a progress bar; None = only when a call needs more than one batch."""
    trust_remote_code: bool = False
    """Passed to ``from_pretrained``."""
    cache_dir: str | None = None
    """Hugging Face cache directory, passed to ``from_pretrained``."""
    revision: str | None = None
    """Model revision (branch, tag or commit), passed to ``from_pretrained``."""

    _embedder: ICLEmbedder = PrivateAttr()

    @model_validator(mode="before")
    @classmethod
    def _known_options(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = sorted(set(data) - set(cls.model_fields) - {"model"})
            if unknown:
                hint = _HF_HINT if _HF_ONLY & set(unknown) else ""
                msg = f"unknown option(s) {unknown}; valid: {sorted(cls.model_fields)} ('model' = 'model_name'){hint}"
                raise ValueError(msg)
        return data

    def model_post_init(self, context: Any, /) -> None:
        """Load the model (or reuse the one from the registry, or the embedder from :meth:`from_embedder`)."""
        given = context.get(_EMBEDDER) if isinstance(context, Mapping) else None
        if given is None:
            given = ICLEmbedder(self.model_name, **self.model_dump(exclude={"model_name"}))
        self._embedder = given

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        """Copies share the loaded model: deep-copying 7B weights (and their lock) is never wanted."""
        return self.model_copy()

    @classmethod
    def from_embedder(cls, embedder: ICLEmbedder) -> Self:
        """Wrap an existing :class:`~bge_icl.ICLEmbedder`, so LangChain uses its already loaded model.

        Args:
            embedder: The core embedder; its options become this instance's fields.
        """
        if not isinstance(embedder, ICLEmbedder):
            msg = f"from_embedder expects a bge_icl.ICLEmbedder, got {type(embedder).__name__}"
            raise TypeError(msg)
        options = embedder.options
        fields = {name: options[name] for name in cls.model_fields if name in options}
        examples = options["examples_for_task"]
        fields.update(
            model_name=embedder.model_name_or_path,
            examples_for_task=None if examples is None else [dict(example) for example in examples],
            devices=[str(d) for d in embedder.devices] if len(embedder.devices) > 1 else str(embedder.device),
            dtype=str(embedder.dtype).removeprefix("torch."),
        )
        return cls.model_validate(fields, context={_EMBEDDER: embedder})

    @property
    def embedder(self) -> ICLEmbedder:
        """The core embedder: share it with the LlamaIndex adapter or call it directly."""
        return self._embedder

    @property
    def dimension(self) -> int:
        """Size of each vector (4096 for bge-en-icl)."""
        return self._embedder.dimension

    def with_examples(self, examples_for_task: Sequence[Mapping[str, str]] | None) -> Self:
        """The same embeddings with other few-shot examples, sharing the loaded weights.

        Args:
            examples_for_task: The new examples; None = zero-shot.
        """
        return self.from_embedder(self._embedder.with_examples(examples_for_task))

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
        """:meth:`embed_documents` in a worker thread; the event loop keeps running."""
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """:meth:`embed_query` in a worker thread; the event loop keeps running."""
        return await asyncio.to_thread(self.embed_query, text)

    def cached(
        self, document_store: ByteStore, query_store: ByteStore | None = None, *, batch_size: int | None = None
    ) -> CacheBackedEmbeddings:
        """These embeddings behind LangChain's ``CacheBackedEmbeddings``, with query and passage vectors kept apart.

        See :func:`langchain_bge_icl.cache_backed_embeddings`; needs ``pip install 'bge-icl[langchain-cache]'``.

        Args:
            document_store: Where passage vectors go (e.g. ``InMemoryByteStore``, ``LocalFileStore``).
            query_store: Where query vectors go; None = ``document_store``, under another namespace.
            batch_size: Passages embedded between two store writes; None = all missing at once.
        """
        from langchain_bge_icl.cache import cache_backed_embeddings

        return cache_backed_embeddings(self, document_store, query_store, batch_size=batch_size)
