"""``ICLEmbedder``: bge-en-icl query and passage embeddings, identical to FlagEmbedding's ``FlagICLModel``.

Everything is decided once, at setup: the options (:mod:`bge_icl.options`), the loaded replicas (device, dtype:
:mod:`bge_icl.loading`), the query prompt's layout (:mod:`bge_icl.prompt_layout`) and the forward path
(:class:`bge_icl.forward.ForwardPath`, from ``prefix_attention``). A call then runs in three stages over a small
typed :class:`Request`, the seams a scheduler drives (Infinity's ``encode_pre`` / ``encode_core`` /
``encode_post``):

- :meth:`ICLEmbedder.prepare`: texts to token ids, truncation, and rows per lane (cached-prefix queries apart);
- a pass (:mod:`bge_icl.scheduler`): a lane's forward over rows of any calls on these weights, on one replica,
  then each call's head (cut, normalize) on its rows;
- :meth:`ICLEmbedder.finish`: the vectors in input order to the caller's array (precision, numpy or torch).

Queries and passages differ only in ``prepare``: the ids put before and after the text.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from typing_extensions import Unpack

from bge_icl.choices import DEFAULT_PRECISION, Precision, check_precision
from bge_icl.counters import Counters
from bge_icl.errors import OptionValueError
from bge_icl.fingerprint import fingerprint
from bge_icl.forward import ForwardPath
from bge_icl.inputs import as_text_list
from bge_icl.job import Job, Rows
from bge_icl.kinds import KINDS, Kind, check_kind
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
from bge_icl.precision import apply_precision, check_calibration
from bge_icl.prefix_cache import PrefixKV, PrefixKVStore, attention_window
from bge_icl.prompt_layout import PromptLayout
from bge_icl.prompts import ICLExample
from bge_icl.runner import Runner
from bge_icl.scheduler import Scheduler, scheduler_for
from bge_icl.st_compat import SentenceTransformersCompat
from bge_icl.tokenization import Tokenized
from bge_icl.truncation import OnTruncation, TruncationError, TruncationWarning, check_mode, report_truncation

__all__ = ["DEFAULT_MAX_BATCH_TOKENS", "KINDS", "CallOptions", "Embedded", "ICLEmbedder", "Kind", "Request", "Stats",
           "TruncationError", "TruncationWarning"]  # fmt: skip

Texts = str | Iterable[str]
Vectors = np.ndarray | torch.Tensor
Head = Callable[[torch.Tensor], torch.Tensor]
DEFAULT_MAX_BATCH_TOKENS = {"cuda": 4096, "cpu": 512}  # about 0.15 s a pass: the 7B on a GPU, the bench model on CPU
DEFAULT_BATCH_SIZE: dict[str, int | None] = {"cpu": 32}  # other devices: no row limit, the token budget decides
INLINE_PREPARE = 32  # aembed tokenizes this many texts on the event loop; more go to a worker thread
INLINE_CHARS = 16_384  # ... and this many characters (about a millisecond of tokenizing); more go to a worker thread


@dataclass(frozen=True)
class Stats:
    """What an embedder has done so far (a snapshot).

    Attributes:
        prefix_hits: Queries that ran on the cached few-shot prefix.
        prefix_misses: Queries that ran as whole prompts although a prefix is cached (they did not start
            with it, or would pass the attention window).
        prefix_builds: Prefix key/value caches built (one per replica that ran a prefix batch).
        replica_rows: Texts embedded by each replica, in ``devices`` order.
        forward_passes: Forward passes that ran some of these texts (rows per pass =
            ``sum(replica_rows) / forward_passes``; a pass shared with other embedders' calls counts for each).
        queued_rows: Texts of calls in flight that have not been embedded yet.
    """

    prefix_hits: int
    prefix_misses: int
    prefix_builds: int
    replica_rows: tuple[int, ...]
    forward_passes: int = 0
    queued_rows: int = 0

    @classmethod
    def of(cls, kv: PrefixKVStore, counters: Counters) -> Stats:
        """A snapshot of a prefix KV store's counters and of work ``counters``."""
        return cls(kv.hits, kv.misses, kv.builds, *counters.snapshot())


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
class Request:
    """One call, prepared (:meth:`ICLEmbedder.prepare`): what the batches and the report need.

    Attributes:
        kind: ``"queries"`` or ``"passages"``.
        ids: Each text's token ids, special tokens (and a query's few-shot prefix) included.
        truncated: Indices of the texts that were cut.
        limit: The length limit applied, as (its option name, its value), for the truncation report.
        groups: The rows per lane (:class:`~bge_icl.job.Rows`): cached queries on their prefix's lane,
            then the rows that run whole (passages, and queries that do not continue the prefix).
    """

    kind: Kind
    ids: list[list[int]]
    truncated: list[int]
    limit: tuple[str, int]
    groups: tuple[Rows, ...]

    def __len__(self) -> int:
        return len(self.ids)


class ICLEmbedder(SentenceTransformersCompat):
    """bge-en-icl embeddings: few-shot (in-context) queries, plain passages, EOS pooling.

    Behaves like FlagEmbedding 1.4.2's ``FlagICLModel`` (same prompts, same truncation, same
    vectors), with the device and dtype fixed at load, one encode path for queries and passages,
    length-sorted token-budget batching and out-of-memory backoff. The options (see
    :class:`~bge_icl.options.EmbedderOptions` for each one's type, default and meaning) are fixed
    once built and read from :attr:`options`; :meth:`with_options` makes another embedder that shares the
    loaded weights. FlagEmbedding's own surface (``set_examples``, ``encode``, its attribute names) is
    :class:`bge_icl.FlagICLModel`, a subclass.

    Args:
        model_name_or_path: Hub id or local directory (also ``model_name=`` or ``model=``).
        **options: Any other :class:`~bge_icl.options.EmbedderOptions` field.

    Raises:
        OptionTypeError: An unknown option (the message lists the valid ones) or a value of the wrong type.
        OptionValueError: A value out of range, or limits that leave no room for text.
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
        o = options
        replicas = _load(o)
        first = replicas[0]
        self._options, self._scheduler = o, scheduler_for(replicas)
        self._counters = Counters(len(replicas))
        self._budget = o.max_batch_tokens or DEFAULT_MAX_BATCH_TOKENS.get(first.device.type, 65536)
        self._row_limit = o.batch_size or DEFAULT_BATCH_SIZE.get(first.device.type)
        self._passage_limit(o.passage_max_length, "passage_max_length")
        self._layout = PromptLayout.build(o, first.tokenizer, attention_window(first.model))
        path = ForwardPath.from_option(o.prefix_attention, first.model)
        self._runner = Runner(path, self._layout.cached_ids, o.truncate_dim, o.normalize_embeddings)

    def __getattr__(self, name: str) -> Any:
        if name in EmbedderOptions.OPTION_NAMES:
            msg = f"{type(self).__name__} reads its options from .options: use .options.{name}"
            raise AttributeError(msg)
        msg = f"{type(self).__name__!r} object has no attribute {name!r}"
        raise AttributeError(msg)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in EmbedderOptions.OPTION_NAMES:
            raise FrozenOptionError(frozen_message(name))
        object.__setattr__(self, name, value)

    # -- what was decided at setup, read-only ----------------------------------------------------

    @property
    def options(self) -> EmbedderOptions:
        """The validated options this embedder was built with (immutable)."""
        return self._options

    @property
    def examples(self) -> tuple[ICLExample, ...]:
        """The few-shot examples, each with its ``instruct`` filled in."""
        return self._layout.examples

    @property
    def prefix(self) -> str:
        """The few-shot prefix text put before every query ('' when zero-shot)."""
        return self._layout.prefix

    @property
    def layout(self) -> PromptLayout:
        """The query prompt's layout: prefix, budgets, cached ids, where prompts split."""
        return self._layout

    @property
    def forward_path(self) -> ForwardPath:
        """The forward path cached queries run on (``prefix_attention`` resolved for this model and device)."""
        return self._runner.path

    @property
    def runner(self) -> Runner:
        """What this embedder runs on its weights: the forward path, the prefix KV, the head, its lanes."""
        return self._runner

    @property
    def replicas(self) -> tuple[LoadedModel, ...]:
        """The loaded models, one per ``devices`` entry; shared with other embedders of the same weights."""
        return self._scheduler.replicas

    @property
    def scheduler(self) -> Scheduler:
        """The scheduler of these weights, shared with every embedder on them (admission: ``is_overloaded``)."""
        return self._scheduler

    @property
    def dimension(self) -> int:
        """Size of each embedding (the model's hidden size, 4096 for bge-en-icl, or ``truncate_dim``)."""
        return self._options.truncate_dim or self._scheduler.replicas[0].hidden_size

    @property
    def device(self) -> torch.device:
        """The (first) device the model runs on, fixed at load."""
        return self._scheduler.replicas[0].device

    @property
    def replica_devices(self) -> list[torch.device]:
        """Every device holding a replica, in the order of the ``devices`` option."""
        return [r.device for r in self._scheduler.replicas]

    @property
    def torch_dtype(self) -> torch.dtype:
        """The model's dtype, fixed at load (the ``dtype`` option resolved)."""
        return self._scheduler.replicas[0].dtype

    @property
    def token_budget(self) -> int:
        """Most padded tokens per forward pass (``max_batch_tokens``, or its default for the device)."""
        return self._budget

    @property
    def row_limit(self) -> int | None:
        """Most texts per forward pass (``batch_size``, or its default for the device; None: the budget decides)."""
        return self._row_limit

    @property
    def prefix_ids(self) -> tuple[int, ...] | None:
        """The token ids whose keys/values are cached (None when queries run whole)."""
        return self._layout.cached_ids

    @property
    def prefix_length(self) -> int | None:
        """How many tokens of every query are cached (None when queries run whole)."""
        ids = self._layout.cached_ids
        return None if ids is None else len(ids)

    @property
    def prefix_kv(self) -> dict[int, PrefixKV]:
        """The prefix KV built so far, by replica index (a snapshot)."""
        return self._runner.kv.snapshot()

    @property
    def stats(self) -> Stats:
        """Counters of the prefix cache and of the replicas' work so far."""
        return Stats.of(self._runner.kv, self._counters)

    @property
    def scheduler_stats(self) -> Stats:
        """:attr:`stats` of every embedder on these weights together (they share the scheduler and its passes): what
        a server reports. The prefix counters are this embedder's."""
        return Stats.of(self._runner.kv, self._scheduler.counters)

    def warm_up(self) -> None:
        """Build the few-shot prefix's key/value cache on every replica now (a server's start-up), not on each
        replica's first query pass; embeds nothing."""
        self._runner.warm_up(self._scheduler.replicas)

    def fingerprint(self, kind: Kind) -> str:
        """sha256 of everything that determines a ``kind`` vector (:func:`bge_icl.fingerprint.fingerprint`):
        equal fingerprints, equal vectors."""
        first = self._scheduler.replicas[0]
        return fingerprint(self._options, check_kind(kind), source=first.source, dtype=str(first.dtype),
                           dimension=self.dimension, prefix=self.prefix)  # fmt: skip

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
            f"{type(self).__name__}({self._options.model_name!r}, examples={len(self.examples)}, "
            f"device={str(self.device)!r}, dtype={self.torch_dtype}, dimension={self.dimension})"
        )

    # -- calls ------------------------------------------------------------------------------------

    def encode_queries(self, queries: Texts, batch_size: int | None = None, max_length: int | None = None,
                       convert_to_numpy: bool | None = None, **call: Unpack[CallOptions]) -> Vectors:  # fmt: skip
        """Embed queries: ``prefix + instruction-formatted query + suffix``, then EOS.

        Args:
            queries: One query or a list of them.
            batch_size: Most texts per forward pass, for this call (FlagEmbedding's argument).
            max_length: ``query_max_length`` for this call.
            convert_to_numpy: False = return a float32 torch tensor (on the CPU) for this call.
            **call: ``show_progress`` / ``on_truncation`` / ``precision`` / ``calibration`` for this call only
                (see :class:`CallOptions`).

        Returns:
            float32 array, shape (N, dimension), or (dimension,) for a single ``str``.
        """
        return self._encode(queries, "queries", batch_size=batch_size, max_length=max_length,
                            convert_to_numpy=convert_to_numpy, **call)  # fmt: skip

    def encode_corpus(self, corpus: Texts, batch_size: int | None = None, max_length: int | None = None,
                      convert_to_numpy: bool | None = None, **call: Unpack[CallOptions]) -> Vectors:  # fmt: skip
        """Embed passages as they are (no prefix, no instruction), then EOS; arguments as :meth:`encode_queries`."""
        return self._encode(corpus, "passages", batch_size=batch_size, max_length=max_length,
                            convert_to_numpy=convert_to_numpy, **call)  # fmt: skip

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
        request = self.prepare(as_text_list(texts)[0], kind)
        self._report(request, on_truncation)
        vectors = self._run(request, False, self._row_limit)
        return Embedded(vectors, tuple(len(x) for x in request.ids), tuple(request.truncated))

    async def aembed(self, texts: Sequence[str], kind: Kind, *, on_truncation: OnTruncation | None = None,
                     dimensions: int | None = None) -> Embedded:  # fmt: skip
        """:meth:`embed` for asyncio callers: the rows join the scheduler's queue and the coroutine waits for them
        without blocking the event loop, so concurrent calls share forward passes. Cancelling the awaiting task
        drops the rows that have not run (a pass that is running finishes). ``dimensions``: this call's head cuts
        the vectors to their first ``dimensions`` before normalizing (a server's per-request ``dimensions``)."""
        items = as_text_list(texts)[0]
        if len(items) > INLINE_PREPARE or sum(map(len, items)) > INLINE_CHARS:  # not on the event loop
            request = await asyncio.to_thread(self.prepare, items, kind)
        else:
            request = self.prepare(items, kind)
        self._report(request, on_truncation)
        vectors = await self._scheduler.arun(self._job(request, self._row_limit, dimensions=dimensions))
        return Embedded(vectors, tuple(len(x) for x in request.ids), tuple(request.truncated))

    def check_truncation(self, texts: Iterable[str], kind: Kind) -> list[int]:
        """Report, as an encode call would, which ``texts`` exceed their max length, without embedding them.

        For callers that split one logical call into several ``encode_*`` calls (the LlamaIndex adapter's
        ``embed_batch_size`` chunks): check once, then encode the chunks with ``on_truncation="ignore"``.

        Returns:
            Indices of the texts that would be truncated.

        Raises:
            TruncationError: Some would be, and ``on_truncation="error"``.
        """
        request = self.prepare(as_text_list(texts)[0], kind)
        self._report(request, None)
        return request.truncated

    def tokenize_queries(self, queries: Sequence[str], max_length: int | None = None) -> Tokenized:
        """The exact token ids the model sees for ``queries`` (special tokens included); ``max_length`` as in
        :meth:`encode_queries`."""
        tok = self._scheduler.replicas[0].tokenizer
        return self._layout.tokenize(tok, queries, self._layout.plan_for(tok, max_length))

    def tokenize_corpus(self, corpus: Sequence[str], max_length: int | None = None) -> Tokenized:
        """The exact token ids the model sees for ``corpus`` (special tokens included)."""
        limit = self._options.passage_max_length if max_length is None else self._passage_limit(max_length)
        return self._scheduler.replicas[0].tokenizer.passages(corpus, limit)

    # -- the stages -------------------------------------------------------------------------------

    def prepare(self, texts: Sequence[str], kind: Kind, max_length: int | None = None) -> Request:
        """Stage 1: checked ``texts`` to token ids, truncation, and rows per lane (no work on the model).

        Args:
            texts: The texts, already checked (:func:`bge_icl.inputs.as_text_list`).
            kind: ``"queries"`` or ``"passages"``.
            max_length: This call's length limit (None: the option's).

        Raises:
            OptionValueError: An unknown ``kind``, or ``max_length`` leaves no room for text.
        """
        name = "query_max_length" if check_kind(kind) == "queries" else "passage_max_length"
        limit = (name, getattr(self._options, name)) if max_length is None else ("max_length", max_length)
        tokenized = (self.tokenize_queries if kind == "queries" else self.tokenize_corpus)(texts, max_length)
        window = attention_window(self._scheduler.replicas[0].model)
        rows = self._runner.rows(tokenized.ids, kind == "queries", window)
        return Request(kind, tokenized.ids, tokenized.truncated, limit, rows)

    def finish(self, vectors: np.ndarray, precision: Precision, calibration: np.ndarray | None, numpy: bool,
               single: bool) -> Vectors:  # fmt: skip
        """Stage 3: the call's float32 vectors, (N, D) in input order, as the caller asked for them."""
        out = apply_precision(vectors, precision, calibration)  # both checked by _encode, before any work
        result = out if numpy else torch.from_numpy(out)
        return result[0] if single else result

    # -- the drive ---------------------------------------------------------------------------------

    def _passage_limit(self, max_length: int, name: str = "max_length") -> int:
        special = self._scheduler.replicas[0].tokenizer.n_special
        if positive_int(name, max_length) <= special:
            msg = f"{name}={max_length} leaves no room for text next to {special} special tokens"
            raise OptionValueError(msg, option=name, value=max_length, rule="room")
        return max_length

    def _report(self, request: Request, mode: OnTruncation | None) -> None:
        mode = self._options.on_truncation if mode is None else check_mode(mode)
        report_truncation(request.truncated, len(request), request.kind, request.limit, mode, stacklevel=4)

    def _encode(self, texts: Texts, kind: Kind, *, batch_size: int | None, max_length: int | None,
                convert_to_numpy: bool | None, **call: Any) -> Vectors:  # fmt: skip
        unknown = sorted(set(call) - set(CallOptions.__annotations__))
        if unknown:
            valid = ["batch_size", "max_length", "convert_to_numpy", *CallOptions.__annotations__]
            msg = f"unknown argument(s) {unknown}; valid: {valid}"
            raise TypeError(msg)
        o = self._options
        row_limit = self._row_limit if batch_size is None else positive_int("batch_size", batch_size)
        numpy = o.convert_to_numpy if convert_to_numpy is None else flag("convert_to_numpy", convert_to_numpy)
        items, single = as_text_list(texts)
        precision = check_precision(call.get("precision") or DEFAULT_PRECISION)
        calibration = check_calibration(precision, call.get("calibration"), self.dimension, len(items))
        request = self.prepare(items, kind, max_length)
        self._report(request, call.get("on_truncation"))
        show = call.get("show_progress")
        vectors = self._run(request, o.show_progress if show is None else show, row_limit)
        return self.finish(vectors, precision, calibration, numpy, single)

    def _job(self, request: Request, row_limit: int | None, progress: Any = None, dimensions: int | None = None
             ) -> Job:  # fmt: skip
        """The scheduler's job for ``request`` (stage 2 runs there, in passes shared with other calls)."""
        if request.kind == "queries":
            self._runner.count(request.groups)
        wait = self._options.batch_wait_ms / 1000
        head, dimension = self._runner.call_head(self.dimension, dimensions)
        return Job(request.ids, request.groups, head, dimension, self._budget, row_limit, wait, progress,
                   self._counters)  # fmt: skip

    def _run(self, request: Request, show: bool | None, row_limit: int | None) -> np.ndarray:  # (N, D)
        """Run ``request`` through the scheduler; the vectors come back in input order."""
        cost = sum(rows.cost for rows in request.groups)
        several = cost > self._budget or (row_limit is not None and len(request) > row_limit)  # more than one pass
        disable = (not show) if show is not None else (True if not several else None)
        with tqdm(total=len(request), desc=f"Embedding {request.kind}", unit="text", disable=disable) as bar:
            return self._scheduler.run(self._job(request, row_limit, bar.update))


def _load(o: EmbedderOptions) -> list[LoadedModel]:
    """The replicas ``o`` asks for (loaded, or shared from the registry).

    Raises:
        ValueError: ``truncate_dim`` exceeds the model's dimension.
    """
    replicas = load_replicas(
        o.model_name, devices=o.devices, dtype=o.dtype, attn_implementation=o.attn_implementation,
        use_fp16=o.use_fp16, use_bf16=o.use_bf16, trust_remote_code=o.trust_remote_code,
        cache_dir=o.cache_dir, revision=o.revision, show_progress=o.show_progress is not False,
    )  # fmt: skip
    if o.truncate_dim is not None and o.truncate_dim > replicas[0].hidden_size:
        msg = f"truncate_dim={o.truncate_dim} exceeds the model's dimension {replicas[0].hidden_size}"
        raise ValueError(msg)
    return replicas
