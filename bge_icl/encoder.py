"""``ICLEmbedder``: bge-en-icl query and passage embeddings, identical to FlagEmbedding's ``FlagICLModel``.

It reads as options -> tokenize -> run. The pieces live in their own modules: the options in
:mod:`bge_icl.options`, prompts in :mod:`bge_icl.prompts`, token ids in :mod:`bge_icl.tokenization`,
the cached few-shot prefix in :mod:`bge_icl.prefix_cache`, batching in :mod:`bge_icl.batching`,
replica workers and out-of-memory backoff in :mod:`bge_icl.replicas`, the forward pass in
:mod:`bge_icl.forward` and truncation reporting in :mod:`bge_icl.truncation`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm
from typing_extensions import Unpack

from bge_icl.batching import Batch, BatchQueue, RowCost, copied_prefix_cost
from bge_icl.errors import OptionValueError
from bge_icl.fingerprint import fingerprint
from bge_icl.flag_compat import FlagICLCompat
from bge_icl.forward import embed_batch
from bge_icl.inputs import as_text_list
from bge_icl.loading import LoadedModel, load_replicas
from bge_icl.options import (
    MODEL_ALIASES,
    CallOptions,
    EmbedderOptions,
    FrozenOptionError,
    flag,
    frozen_message,
    positive_int,
)
from bge_icl.precision import check_calibration, check_precision, quantize
from bge_icl.prefix_cache import PrefixCache, SharedPrefix, attention_window
from bge_icl.prompts import ICLExample, build_prefix, format_query, validate_examples
from bge_icl.replicas import ReplicaPool
from bge_icl.shared_prefix import shared_prefix_cost, supports_shared_prefix
from bge_icl.st_compat import SentenceTransformersCompat
from bge_icl.tokenization import PrefixSplit, QueryPlan, Tokenized
from bge_icl.truncation import OnTruncation, TruncationError, TruncationWarning, check_mode, report_truncation

__all__ = ["DEFAULT_MAX_BATCH_TOKENS", "CallOptions", "Embedded", "ICLEmbedder", "Stats", "TruncationError",
           "TruncationWarning"]

Kind = Literal["queries", "passages"]
Texts = str | Iterable[str]
Vectors = np.ndarray | torch.Tensor
KINDS: tuple[Kind, ...] = ("queries", "passages")
DEFAULT_MAX_BATCH_TOKENS = {"cuda": 65536, "cpu": 16384}
DEFAULT_BATCH_SIZE: dict[str, int | None] = {"cpu": 32}  # other devices: no row limit, the token budget decides


@dataclass(frozen=True)
class Embedded:
    """The result of :meth:`ICLEmbedder.embed`: vectors plus what a server reports about them.

    Attributes:
        vectors: float32, shape (N, dimension), in input order.
        tokens: For each text, the tokens of the sequence the model embedded (special tokens and, for a query, the
            few-shot prefix included), after truncation.
        truncated: Indices of the texts that were cut to their max length.
    """

    vectors: np.ndarray
    tokens: tuple[int, ...]
    truncated: tuple[int, ...]


@dataclass(frozen=True)
class Stats:
    """What an embedder has done so far (a snapshot).

    Attributes:
        prefix_hits: Queries that ran on the cached few-shot prefix.
        prefix_misses: Queries that ran as whole prompts although a prefix is cached (they did not start
            with it, or would pass the attention window).
        prefix_builds: Prefix key/value caches built (one per replica that ran a prefix batch).
        replica_rows: Texts embedded by each replica, in ``devices`` order.
        forward_passes: Forward passes run by the replicas (rows per pass = ``sum(replica_rows) / forward_passes``).
        queued_rows: Texts of calls in flight that have not been embedded yet.
    """

    prefix_hits: int
    prefix_misses: int
    prefix_builds: int
    replica_rows: tuple[int, ...]
    forward_passes: int = 0
    queued_rows: int = 0


class ICLEmbedder(FlagICLCompat, SentenceTransformersCompat):
    """bge-en-icl embeddings: few-shot (in-context) queries, plain passages, EOS pooling.

    Behaves like FlagEmbedding 1.4.2's ``FlagICLModel`` (same prompts, same truncation, same
    vectors), with the device and dtype fixed at load, one encode path for queries and passages,
    length-sorted token-budget batching and out-of-memory backoff. The options (see
    :class:`~bge_icl.options.EmbedderOptions` for each one's type, default and meaning) are fixed
    once built; :meth:`with_options` makes another embedder that shares the loaded weights.
    FlagEmbedding's public methods work too (:class:`~bge_icl.flag_compat.FlagICLCompat`), so
    ``from bge_icl import ICLEmbedder as FlagICLModel`` runs existing code.

    Args:
        model_name_or_path: Hub id or local directory (also ``model_name=`` or ``model=``).
        **options: Any other :class:`~bge_icl.options.EmbedderOptions` field.

    Raises:
        TypeError: An unknown option (the message lists the valid ones) or a value of the wrong type.
        ValueError: A value out of range, or limits that leave no room for text.
        OSError: The model cannot be loaded.

    Example:
        >>> emb = ICLEmbedder("BAAI/bge-en-icl", examples_for_task=examples,
        ...                   query_instruction_for_retrieval=WEB_SEARCH_INSTRUCTION)  # doctest: +SKIP
        >>> emb.encode_queries(["how much protein should a female eat"]).shape  # doctest: +SKIP
        (1, 4096)
    """

    def __init__(self, model_name_or_path: str | os.PathLike[str] | None = None, **options: Any) -> None:
        if model_name_or_path is not None:
            twice = sorted(set(options) & set(MODEL_ALIASES))
            if twice:
                msg = f"the model is given twice: as the first argument and as {twice[0]}="
                raise TypeError(msg)
            options["model_name"] = model_name_or_path
        self._setup(EmbedderOptions.checked(**options))

    @classmethod
    def from_options(cls, options: EmbedderOptions) -> ICLEmbedder:
        """Build from validated options (an adapter's, too: only the option fields are read)."""
        self = cls.__new__(cls)
        self._setup(options.options())
        return self

    def _setup(self, options: EmbedderOptions) -> None:
        o = self._options = options
        self._initial_examples, self._backs_adapter = o.examples_for_task, False
        self._examples = validate_examples(o.examples_for_task, o.query_instruction_for_retrieval)
        self._prefix_text = build_prefix(self._examples, o.examples_instruction_format)
        self._pool = ReplicaPool(
            load_replicas(
                o.model_name,
                devices=o.devices,
                dtype=o.dtype,
                attn_implementation=o.attn_implementation,
                use_fp16=o.use_fp16,
                use_bf16=o.use_bf16,
                trust_remote_code=o.trust_remote_code,
                cache_dir=o.cache_dir,
                revision=o.revision,
                show_progress=o.show_progress is not False,
            )
        )
        first = self._pool.replicas[0]
        if o.truncate_dim is not None and o.truncate_dim > first.hidden_size:
            msg = f"truncate_dim={o.truncate_dim} exceeds the model's dimension {first.hidden_size}"
            raise ValueError(msg)
        self._budget = o.max_batch_tokens or DEFAULT_MAX_BATCH_TOKENS.get(first.device.type, 65536)
        self._rows = o.batch_size or DEFAULT_BATCH_SIZE.get(first.device.type)
        # Cached queries attend to one shared copy of the prefix where the model's layout allows (else a copy per row).
        shared = supports_shared_prefix(first.model) and os.environ.get("BGE_ICL_PREFIX_ATTENTION") != "copy"
        self._row_cost: RowCost = shared_prefix_cost(first.model.config) if shared else copied_prefix_cost
        self._shared_attention = shared
        tok = first.tokenizer
        self._plan = self._query_plan(o.query_max_length, "query_max_length")
        self._passage_limit(o.passage_max_length, "passage_max_length")
        special = set(tok.tokenizer.all_special_ids) - set(tok.head)
        self._probes = [format_query(q, o.query_instruction_for_retrieval, o.query_instruction_format) for q in "a1"]
        probe = tok.queries(self._probes, self._plan).ids
        self._shared = SharedPrefix(lambda: (probe[0], probe[1]), tok.head, special, o.prefix_cache)
        self._split: PrefixSplit | None = None
        self._split_known = False

    # -- configuration, read-only ---------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_") and name in EmbedderOptions.OPTION_NAMES:
            return getattr(self._options, name)
        msg = f"{type(self).__name__!r} object has no attribute {name!r}"
        raise AttributeError(msg)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in EmbedderOptions.OPTION_NAMES:
            raise FrozenOptionError(frozen_message(name))
        object.__setattr__(self, name, value)

    @property
    def options(self) -> EmbedderOptions:
        """The validated options this embedder was built with (immutable)."""
        return self._options

    @property
    def model_name_or_path(self) -> str:
        """The model option as given (FlagEmbedding's name for it)."""
        return self._options.model_name

    @property
    def examples(self) -> tuple[ICLExample, ...]:
        """The few-shot examples, each with its ``instruct`` filled in."""
        return self._examples

    @property
    def prefix(self) -> str:
        """The few-shot prefix text put before every query ('' when zero-shot)."""
        return self._prefix_text

    @property
    def replicas(self) -> tuple[LoadedModel, ...]:
        """The loaded models, one per ``devices`` entry; shared with other embedders of the same weights."""
        return self._pool.replicas

    @property
    def dimension(self) -> int:
        """Size of each embedding (the model's hidden size, 4096 for bge-en-icl, or ``truncate_dim``)."""
        return self._options.truncate_dim or self._pool.replicas[0].hidden_size

    @property
    def device(self) -> torch.device:
        """The (first) device the model runs on, fixed at load."""
        return self._pool.replicas[0].device

    @property
    def devices(self) -> list[torch.device]:
        """Every device holding a replica, in the order given."""
        return [r.device for r in self._pool.replicas]

    @property
    def dtype(self) -> torch.dtype:
        """The model's dtype, fixed at load."""
        return self._pool.replicas[0].dtype

    @property
    def token_budget(self) -> int:
        """Most padded tokens per forward pass (``max_batch_tokens``, or its default for the device)."""
        return self._budget

    @property
    def prefix_ids(self) -> tuple[int, ...] | None:
        """The token ids whose keys/values are cached (None when queries run whole)."""
        return self._shared.ids(attention_window(self._pool.replicas[0].model))

    @property
    def prefix_length(self) -> int | None:
        """How many tokens of every query are cached (None when queries run whole)."""
        ids = self.prefix_ids
        return None if ids is None else len(ids)

    @property
    def prefix_caches(self) -> dict[int, PrefixCache]:
        """The prefix key/value caches built so far, by replica index (a snapshot)."""
        return self._shared.caches

    @property
    def stats(self) -> Stats:
        """Counters of the prefix cache and of the replicas' work so far."""
        s, pool = self._shared, self._pool
        return Stats(s.hits, s.misses, s.builds, pool.rows, pool.passes, pool.queued)

    def fingerprint(self, kind: Kind) -> str:
        """sha256 of everything that determines a ``kind`` vector (:func:`bge_icl.fingerprint.fingerprint`):
        equal fingerprints, equal vectors."""
        first = self._pool.replicas[0]
        o = self._check_kind(kind)
        return fingerprint(o, kind, source=first.source, dtype=str(first.dtype), dimension=self.dimension,
                           prefix=self.prefix)  # fmt: skip

    def with_options(self, **changes: Any) -> ICLEmbedder:
        """A new embedder with ``changes`` applied; it shares the loaded weights when the model settings agree."""
        return type(self).from_options(self._options.replace(**changes))

    def with_examples(self, examples_for_task: Sequence[Mapping[str, str]] | None) -> ICLEmbedder:
        """A new embedder with other few-shot examples (None = zero-shot), sharing the loaded weights."""
        return self.with_options(examples_for_task=examples_for_task)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickles carry the options; unpickling loads the model (or reuses the process's copy).
        return (type(self).from_options, (self._options,))

    def __deepcopy__(self, memo: dict[int, Any]) -> ICLEmbedder:
        return self.with_options()  # the same weights, never a second copy of them

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.model_name_or_path!r}, examples={len(self.examples)}, "
            f"device={str(self.device)!r}, dtype={self.dtype}, dimension={self.dimension})"
        )

    # -- options -> tokenize -> run ------------------------------------------------------------------

    def encode_queries(self, queries: Texts, batch_size: int | None = None, max_length: int | None = None,
                       convert_to_numpy: bool | None = None, **call: Unpack[CallOptions]) -> Vectors:  # fmt: skip
        """Embed queries: ``prefix + instruction-formatted query + suffix``, then EOS.

        Args:
            queries: One query or a list of them.
            batch_size: Most texts per forward pass, for this call (FlagEmbedding's argument).
            max_length: ``query_max_length`` for this call.
            convert_to_numpy: False = return a float32 torch tensor (on the CPU) for this call.
            **call: ``show_progress`` / ``on_truncation`` for this call only (see :class:`CallOptions`).

        Returns:
            float32 array, shape (N, dimension), or (dimension,) for a single ``str``.
        """
        return self._encode(queries, "queries", batch_size, max_length, convert_to_numpy, **call)

    def encode_corpus(self, corpus: Texts, batch_size: int | None = None, max_length: int | None = None,
                      convert_to_numpy: bool | None = None, **call: Unpack[CallOptions]) -> Vectors:  # fmt: skip
        """Embed passages as they are (no prefix, no instruction), then EOS; arguments as :meth:`encode_queries`."""
        return self._encode(corpus, "passages", batch_size, max_length, convert_to_numpy, **call)

    def embed(self, texts: Sequence[str], kind: Kind, *, on_truncation: OnTruncation | None = None) -> Embedded:
        """Embed ``texts`` as ``kind`` and report their token counts (what a server's ``usage`` needs).

        Args:
            texts: The texts (a list; each item checked as in :meth:`encode_queries`).
            kind: ``"queries"`` or ``"passages"``.
            on_truncation: Override of the option for this call (``"error"``: a :class:`TruncationError` whose
                ``indices`` name the texts that are too long, before any compute).

        Returns:
            An :class:`Embedded` (float32 vectors in input order, token counts, truncated indices).
        """
        self._check_kind(kind)
        items, _ = as_text_list(texts)
        mode = self._options.on_truncation if on_truncation is None else check_mode(on_truncation)
        tokenized, reported = self._tokenize(items, kind, None)
        report_truncation(tokenized.truncated, len(items), kind, reported, mode, stacklevel=3)
        vectors = self._run(tokenized.ids, kind, False, self._rows)
        return Embedded(vectors, tuple(len(x) for x in tokenized.ids), tuple(tokenized.truncated))

    async def aembed(self, texts: Sequence[str], kind: Kind, *, on_truncation: OnTruncation | None = None) -> Embedded:
        """:meth:`embed` for asyncio callers; the event loop keeps running while the model works."""
        return await asyncio.to_thread(self.embed, texts, kind, on_truncation=on_truncation)

    def check_truncation(self, texts: Iterable[str], kind: Kind) -> list[int]:
        """Report, as an encode call would, which ``texts`` exceed their max length, without embedding them.

        For callers that split one logical call into several ``encode_*`` calls (the LlamaIndex adapter's
        ``embed_batch_size`` chunks): check once, then encode the chunks with ``on_truncation="ignore"``.

        Returns:
            Indices of the texts that would be truncated.

        Raises:
            TruncationError: Some would be, and ``on_truncation="error"``.
        """
        self._check_kind(kind)
        items, _ = as_text_list(texts)
        tokenized, limit = self._tokenize(items, kind, None)
        report_truncation(tokenized.truncated, len(items), kind, limit, self._options.on_truncation, stacklevel=3)
        return tokenized.truncated

    def tokenize_queries(self, queries: Sequence[str], max_length: int | None = None) -> Tokenized:
        """The exact token ids the model sees for ``queries`` (special tokens included); ``max_length`` as in
        :meth:`encode_queries`."""
        o = self._options
        plan = self._plan if max_length in (None, o.query_max_length) else self._query_plan(max_length, "max_length")
        formatted = [format_query(q, o.query_instruction_for_retrieval, o.query_instruction_format) for q in queries]
        return self._pool.replicas[0].tokenizer.queries(formatted, plan, self._query_split())

    def _query_split(self) -> PrefixSplit | None:
        """Where query prompts split into the cached prefix (ids known) and the rest (tokenized per call)."""
        if not self._split_known:
            tok, ids = self._pool.replicas[0].tokenizer, self.prefix_ids
            self._split = None if ids is None else tok.prefix_split(tok.prompts(self._probes, self._plan)[0], ids)
            self._split_known = True
        return self._split

    def tokenize_corpus(self, corpus: Sequence[str], max_length: int | None = None) -> Tokenized:
        """The exact token ids the model sees for ``corpus`` (special tokens included)."""
        limit = self._options.passage_max_length if max_length is None else self._passage_limit(max_length)
        return self._pool.replicas[0].tokenizer.passages(corpus, limit)

    def _query_plan(self, max_length: int, name: str = "max_length") -> QueryPlan:
        o, tok = self._options, self._pool.replicas[0].tokenizer
        plan = tok.query_plan(self._prefix_text, o.suffix, positive_int(name, max_length))
        if plan.query_budget <= 0:
            msg = (
                f"{name}={max_length} leaves no room for the query: BOS, the suffix "
                f"{o.suffix!r} and EOS take {max_length - plan.query_budget} tokens"
            )
            raise OptionValueError(msg, option=name, value=max_length)
        return plan

    def _passage_limit(self, max_length: int, name: str = "max_length") -> int:
        special = self._pool.replicas[0].tokenizer.n_special
        if positive_int(name, max_length) <= special:
            msg = f"{name}={max_length} leaves no room for text next to {special} special tokens"
            raise OptionValueError(msg, option=name, value=max_length)
        return max_length

    def _check_kind(self, kind: str) -> EmbedderOptions:
        if kind not in KINDS:
            msg = f"kind={kind!r} is not supported; valid: {KINDS}"
            raise ValueError(msg)
        return self._options

    def _tokenize(self, items: list[str], kind: Kind, max_length: int | None) -> tuple[Tokenized, tuple[str, int]]:
        name = "query_max_length" if kind == "queries" else "passage_max_length"
        limit = (name, getattr(self._options, name)) if max_length is None else ("max_length", max_length)
        tokenize = self.tokenize_queries if kind == "queries" else self.tokenize_corpus
        return tokenize(items, max_length), limit

    def _encode(
        self, texts: Texts, kind: Kind, rows: int | None, limit: int | None, numpy: bool | None, **call: Any
    ) -> Vectors:
        unknown = sorted(set(call) - set(CallOptions.__annotations__))
        if unknown:
            valid = ["batch_size", "max_length", "convert_to_numpy", *CallOptions.__annotations__]
            msg = f"unknown argument(s) {unknown}; valid: {valid}"
            raise TypeError(msg)
        o = self._options
        rows = self._rows if rows is None else positive_int("batch_size", rows)
        numpy = o.convert_to_numpy if numpy is None else flag("convert_to_numpy", numpy)
        mode, show = call.get("on_truncation"), call.get("show_progress")
        on_truncation = o.on_truncation if mode is None else check_mode(mode)
        items, single = as_text_list(texts)
        precision = check_precision(call.get("precision") or "float32")
        calibration = check_calibration(precision, call.get("calibration"), self.dimension, len(items))
        tokenized, reported = self._tokenize(items, kind, limit)
        report_truncation(tokenized.truncated, len(items), kind, reported, on_truncation, stacklevel=3)
        vectors = self._run(tokenized.ids, kind, o.show_progress if show is None else show, rows)
        vectors = quantize(vectors, precision, calibration)
        out = vectors if numpy else torch.from_numpy(vectors)
        return out[0] if single else out

    def _run(self, ids: list[list[int]], kind: Kind, show: bool | None, rows: int | None) -> np.ndarray:  # (N, D)
        """Embed token-id lists longest first under the token budget; rows come back in input order.

        Queries that start with the cached prefix run on it; the rest run as whole prompts.
        """
        n, pad_id = len(ids), self._pool.replicas[0].tokenizer.pad_id
        window = attention_window(self._pool.replicas[0].model)
        groups = self._shared.split(ids, window) if kind == "queries" else [(list(range(n)), [len(x) for x in ids], 0)]
        queue = BatchQueue(groups, rows, self._budget, self._row_cost)
        out = np.empty((n, self.dimension), dtype=np.float32)  # (N, H)

        def step(replica: int, loaded: LoadedModel, batch: Batch) -> torch.Tensor:
            prefix = self._shared.cache_on(replica, loaded.model) if batch.skip else None
            o, batch_ids = self._options, [ids[i] for i in batch.rows]
            shared = self._shared_attention
            return embed_batch(loaded.model, batch_ids, pad_id, o.normalize_embeddings, prefix, o.truncate_dim, shared)

        disable = (not show) if show is not None else (True if queue.batches <= 1 else None)
        done: list[tuple[list[int], torch.Tensor]] = []  # vectors stay on their device until the call ends
        with tqdm(total=n, desc=f"Embedding {kind}", unit="text", disable=disable) as bar:

            def sink(batch: Batch, vectors: torch.Tensor) -> None:
                done.append((batch.rows, vectors))  # no host sync here: the next batch is queued at once
                bar.update(len(batch.rows))

            self._pool.run(queue, step, sink)
        for rows_of_batch, vectors in done:
            out[rows_of_batch] = vectors.cpu().numpy()  # (B, D): one copy to the host per batch, after all ran
        return out
