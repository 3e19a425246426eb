"""``ICLEmbedder``: bge-en-icl query and passage embeddings, identical to FlagEmbedding's ``FlagICLModel``."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from bge_icl.batching import BatchQueue
from bge_icl.forward import embed_batch
from bge_icl.inputs import as_text_list
from bge_icl.loading import DeviceSpec, LoadedModel, load_model, resolve_attention, resolve_devices, resolve_dtype
from bge_icl.prefix_cache import PrefixCache, attention_window, build_prefix_cache, starts_with
from bge_icl.prompts import (
    DEFAULT_EXAMPLES_INSTRUCTION_FORMAT,
    DEFAULT_QUERY_INSTRUCTION_FORMAT,
    DEFAULT_SUFFIX,
    ICLExample,
    build_prefix,
    format_query,
    validate_examples,
    validate_template,
)
from bge_icl.tokenization import Tokenized

OnTruncation = Literal["warn", "error", "ignore"]
ON_TRUNCATION = ("warn", "error", "ignore")
DEFAULT_MAX_BATCH_TOKENS = {"cuda": 65536, "cpu": 16384}


class TruncationWarning(UserWarning):
    """Some texts were longer than ``query_max_length`` / ``passage_max_length`` and were cut."""


class TruncationError(ValueError):
    """Raised instead of :class:`TruncationWarning` when ``on_truncation="error"``."""


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        msg = f"{name} must be a positive int, got {value!r}"
        raise ValueError(msg)
    return value


class ICLEmbedder:
    """bge-en-icl embeddings: few-shot (in-context) queries, plain passages, EOS pooling.

    Behaves like FlagEmbedding 1.4.2's ``FlagICLModel`` (same prompts, same truncation, same
    vectors), with the device and dtype fixed at load, one encode path for queries and passages,
    length-sorted token-budget batching and out-of-memory backoff.

    Args:
        model_name_or_path: Hub id or local directory, loaded with ``from_pretrained``.
        examples_for_task: Few-shot examples, each ``{"instruct"?, "query", "response"}``; None = zero-shot.
        query_instruction_for_retrieval: The task instruction put before each query; None = query as is.
        query_instruction_format: Template with two ``{}``: instruction, query.
        examples_instruction_format: Template with three ``{}``: instruction, query, response.
        suffix: Appended after each query (before EOS).
        query_max_length: Token limit for a query (without the examples prefix), FlagEmbedding's meaning.
        passage_max_length: Token limit for a passage, special tokens included.
        normalize_embeddings: L2-normalize the vectors (in float32).
        devices: FlagEmbedding's meaning: None = first CUDA GPU else CPU; ``0`` or ``[0]`` = ``cuda:0``;
            ``"cpu"``, ``"cuda:1"``; a list = one model replica per entry, fed from one batch queue;
            ``"auto"`` = every visible GPU (CPU when there is none).
        dtype: ``"auto"`` (float16 on GPU, float32 on CPU), ``"float16"``, ``"bfloat16"``, ``"float32"``
            or a ``torch.dtype``.
        batch_size: Most texts per forward pass.
        max_batch_tokens: Most padded tokens per forward pass; None = 65,536 on GPU, 16,384 on CPU.
        attn_implementation: ``"sdpa"``, ``"eager"`` or ``"flash_attention_2"``; None = flash-attn 2
            on GPU when installed, else sdpa.
        prefix_cache: Run the constant few-shot prefix once and reuse its keys/values for every query
            (same vectors, much less compute). False always runs the whole prompt.
        on_truncation: What to do when texts are cut to their max length: ``"warn"`` (one
            :class:`TruncationWarning` per call), ``"error"`` (raise :class:`TruncationError`), ``"ignore"``.
        show_progress: Show a progress bar; None = only when a call needs more than one batch.
        trust_remote_code: Passed to ``from_pretrained``. Off by default.
        cache_dir: Passed to ``from_pretrained``.
        revision: Passed to ``from_pretrained``.
        use_fp16: FlagEmbedding compatibility: False means float32. Used only when ``dtype="auto"``.
        use_bf16: FlagEmbedding compatibility: True means bfloat16 on GPU. Used only when ``dtype="auto"``.

    Example:
        >>> emb = ICLEmbedder("BAAI/bge-en-icl", examples_for_task=examples,
        ...                   query_instruction_for_retrieval=WEB_SEARCH_INSTRUCTION)  # doctest: +SKIP
        >>> emb.encode_queries(["how much protein should a female eat"]).shape  # doctest: +SKIP
        (1, 4096)
    """

    def __init__(
        self,
        model_name_or_path: str = "BAAI/bge-en-icl",
        *,
        examples_for_task: Sequence[Mapping[str, str]] | None = None,
        query_instruction_for_retrieval: str | None = None,
        query_instruction_format: str = DEFAULT_QUERY_INSTRUCTION_FORMAT,
        examples_instruction_format: str = DEFAULT_EXAMPLES_INSTRUCTION_FORMAT,
        suffix: str = DEFAULT_SUFFIX,
        query_max_length: int = 512,
        passage_max_length: int = 512,
        normalize_embeddings: bool = True,
        devices: DeviceSpec = None,
        dtype: str | torch.dtype = "auto",
        batch_size: int = 32,
        max_batch_tokens: int | None = None,
        attn_implementation: str | None = None,
        prefix_cache: bool = True,
        on_truncation: OnTruncation = "warn",
        show_progress: bool | None = None,
        trust_remote_code: bool = False,
        cache_dir: str | None = None,
        revision: str | None = None,
        use_fp16: bool | None = None,
        use_bf16: bool | None = None,
    ) -> None:
        self._options: dict[str, Any] = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        if not isinstance(model_name_or_path, str) or not model_name_or_path:
            msg = f"model_name_or_path must be a non-empty str (hub id or local directory), got {model_name_or_path!r}"
            raise ValueError(msg)
        if query_instruction_for_retrieval is not None and not isinstance(query_instruction_for_retrieval, str):
            kind = type(query_instruction_for_retrieval).__name__
            msg = f"query_instruction_for_retrieval must be a str or None, got {kind}"
            raise TypeError(msg)
        if not isinstance(suffix, str):
            msg = f"suffix must be a str, got {type(suffix).__name__}"
            raise TypeError(msg)
        if on_truncation not in ON_TRUNCATION:
            msg = f"on_truncation={on_truncation!r} is not supported; valid: {ON_TRUNCATION}"
            raise ValueError(msg)
        self.model_name_or_path = model_name_or_path
        self.query_instruction_for_retrieval = query_instruction_for_retrieval
        self.query_instruction_format = validate_template("query_instruction_format", query_instruction_format, 2)
        self.examples_instruction_format = validate_template(
            "examples_instruction_format", examples_instruction_format, 3
        )
        self.examples: tuple[ICLExample, ...] = validate_examples(examples_for_task, query_instruction_for_retrieval)
        self.suffix = suffix
        self.prefix = build_prefix(self.examples, self.examples_instruction_format)
        self.query_max_length = _positive_int("query_max_length", query_max_length)
        self.passage_max_length = _positive_int("passage_max_length", passage_max_length)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.normalize_embeddings = bool(normalize_embeddings)
        self.on_truncation: OnTruncation = on_truncation
        self.show_progress = show_progress
        self.prefix_cache = bool(prefix_cache)
        self._prefix_ids_value: list[int] | None = None
        self._prefix_ids_known = False
        self._prefixes: dict[int, PrefixCache] = {}  # replica index -> its key/value cache of the prefix
        self._stats_lock = threading.Lock()
        self.cache_stats = {"hits": 0, "misses": 0}  # queries run on the prefix cache / as whole prompts

        devs = resolve_devices(devices)
        if dtype == "auto" and (use_fp16 is False or use_bf16):
            dtype = "bfloat16" if use_bf16 and devs[0] != "cpu" else "float32"
        device_type = torch.device(devs[0]).type
        default_budget = DEFAULT_MAX_BATCH_TOKENS.get(device_type, DEFAULT_MAX_BATCH_TOKENS["cuda"])
        self.max_batch_tokens = _positive_int(
            "max_batch_tokens", default_budget if max_batch_tokens is None else max_batch_tokens
        )
        # One model replica per listed device; a device listed twice gets two replicas.
        self._replicas: list[LoadedModel] = [
            load_model(
                model_name_or_path,
                device=device,
                dtype=resolve_dtype(dtype, device),
                attn_implementation=resolve_attention(attn_implementation, device),
                trust_remote_code=trust_remote_code,
                cache_dir=cache_dir,
                revision=revision,
                replica=devs[:k].count(device),
            )
            for k, device in enumerate(devs)
        ]
        self._loaded = self._replicas[0]
        self.replica_rows = [0] * len(self._replicas)  # texts embedded by each replica so far
        tok = self._loaded.tokenizer
        self._query_plan = tok.query_plan(self.prefix, self.suffix, self.query_max_length)
        if self._query_plan.query_budget <= 0:
            msg = (
                f"query_max_length={query_max_length} leaves no room for the query: BOS, the suffix "
                f"{suffix!r} and EOS take {query_max_length - self._query_plan.query_budget} tokens"
            )
            raise ValueError(msg)
        if self.passage_max_length <= tok.n_special:
            msg = (
                f"passage_max_length={passage_max_length} leaves no room for text next to "
                f"{tok.n_special} special tokens"
            )
            raise ValueError(msg)

    # -- public API -------------------------------------------------------------------------

    @property
    def dimension(self) -> int:
        """Size of each embedding (the model's hidden size; 4096 for bge-en-icl)."""
        return self._loaded.hidden_size

    @property
    def device(self) -> torch.device:
        """The (first) device the model runs on, fixed at load."""
        return self._loaded.device

    @property
    def devices(self) -> list[torch.device]:
        """Every device holding a replica, in the order given."""
        return [r.device for r in self._replicas]

    @property
    def dtype(self) -> torch.dtype:
        """The model's dtype, fixed at load."""
        return self._loaded.dtype

    @property
    def options(self) -> dict[str, Any]:
        """The constructor arguments this embedder was built with (a copy)."""
        return dict(self._options)

    def with_examples(self, examples_for_task: Sequence[Mapping[str, str]] | None) -> ICLEmbedder:
        """A new embedder with other few-shot examples that shares this one's loaded model.

        Args:
            examples_for_task: The new examples; None = zero-shot.
        """
        return type(self)(**{**self._options, "examples_for_task": examples_for_task})

    def encode_queries(
        self,
        queries: str | Iterable[str],
        *,
        show_progress: bool | None = None,
        on_truncation: OnTruncation | None = None,
    ) -> np.ndarray:
        """Embed queries: ``prefix + instruction-formatted query + suffix``, then EOS.

        Args:
            queries: One query or a list of them.
            show_progress: Override the embedder's ``show_progress`` for this call.
            on_truncation: Override the embedder's ``on_truncation`` for this call.

        Returns:
            float32 array, shape (N, dimension), or (dimension,) for a single ``str``.
        """
        return self._encode(queries, "queries", show_progress, on_truncation)

    def encode_corpus(
        self,
        corpus: str | Iterable[str],
        *,
        show_progress: bool | None = None,
        on_truncation: OnTruncation | None = None,
    ) -> np.ndarray:
        """Embed passages as they are (no prefix, no instruction), then EOS.

        Args:
            corpus: One passage or a list of them.
            show_progress: Override the embedder's ``show_progress`` for this call.
            on_truncation: Override the embedder's ``on_truncation`` for this call.

        Returns:
            float32 array, shape (N, dimension), or (dimension,) for a single ``str``.
        """
        return self._encode(corpus, "passages", show_progress, on_truncation)

    def check_truncation(self, texts: Iterable[str], kind: Literal["queries", "passages"]) -> list[int]:
        """Report, as an encode call would, which ``texts`` exceed their max length, without embedding them.

        For callers that split one logical call into several ``encode_*`` calls (the LlamaIndex adapter's
        ``embed_batch_size`` chunks): check once, then encode the chunks with ``on_truncation="ignore"``.

        Returns:
            Indices of the texts that would be truncated.

        Raises:
            TruncationError: Some would be, and ``on_truncation="error"``.
        """
        if kind not in ("queries", "passages"):
            msg = f"kind={kind!r} is not supported; valid: ('queries', 'passages')"
            raise ValueError(msg)
        items, _ = as_text_list(texts)
        tokenized, limit = self._tokenize(items, kind)
        self._report_truncation(tokenized.truncated, len(items), kind, limit, self.on_truncation)
        return tokenized.truncated

    encode = encode_corpus

    def tokenize_queries(self, queries: Sequence[str]) -> Tokenized:
        """The exact token ids the model sees for ``queries`` (special tokens included)."""
        formatted = [
            format_query(q, self.query_instruction_for_retrieval, self.query_instruction_format) for q in queries
        ]
        return self._loaded.tokenizer.queries(formatted, self._query_plan)

    def tokenize_corpus(self, corpus: Sequence[str]) -> Tokenized:
        """The exact token ids the model sees for ``corpus`` (special tokens included)."""
        return self._loaded.tokenizer.passages(corpus, self.passage_max_length)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.model_name_or_path!r}, examples={len(self.examples)}, "
            f"device={str(self.device)!r}, dtype={self.dtype}, dimension={self.dimension})"
        )

    # -- the one encode path -----------------------------------------------------------------

    def _encode(
        self,
        texts: str | Iterable[str],
        kind: Literal["queries", "passages"],
        show: bool | None,
        on_truncation: OnTruncation | None,
    ) -> np.ndarray:
        items, single = as_text_list(texts)
        if not items:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if on_truncation is not None and on_truncation not in ON_TRUNCATION:
            msg = f"on_truncation={on_truncation!r} is not supported; valid: {ON_TRUNCATION}"
            raise ValueError(msg)
        tokenized, limit = self._tokenize(items, kind)
        self._report_truncation(tokenized.truncated, len(items), kind, limit, on_truncation or self.on_truncation)
        vectors = self._embed_ids(tokenized.ids, kind, self.show_progress if show is None else show)
        return vectors[0] if single else vectors

    def _tokenize(self, items: list[str], kind: str) -> tuple[Tokenized, tuple[str, int]]:
        if kind == "queries":
            return self.tokenize_queries(items), ("query_max_length", self.query_max_length)
        return self.tokenize_corpus(items), ("passage_max_length", self.passage_max_length)

    def _report_truncation(
        self, truncated: list[int], n: int, kind: str, limit: tuple[str, int], mode: OnTruncation
    ) -> None:
        if not truncated or mode == "ignore":
            return
        msg = (
            f"{len(truncated)} of {n} {kind} exceeded {limit[0]}={limit[1]} tokens and were truncated "
            f"(first: item {truncated[0]})"
        )
        if mode == "error":
            raise TruncationError(msg + "; shorten or split them, raise the limit, or pass on_truncation='warn'")
        warnings.warn(msg, TruncationWarning, stacklevel=4)

    @property
    def _prefix(self) -> PrefixCache | None:
        """The first replica's prefix cache (None until the first query call, or when unusable)."""
        return self._prefixes.get(0)

    def _prefix_ids(self) -> list[int] | None:
        """The ids every query starts with, when long enough to be worth caching (computed once)."""
        if not self._prefix_ids_known:
            ids = self._stable_prefix_ids()
            window = attention_window(self._loaded.model)
            usable = len(ids) > len(self._loaded.tokenizer.head) and (window is None or len(ids) < window)
            self._prefix_ids_value = ids if usable else None
            self._prefix_ids_known = True
        return self._prefix_ids_value

    def _prefix_on(self, replica: int, ids: list[int]) -> PrefixCache:
        """The key/value cache of ``ids`` on one replica, built on first use; call under its lock."""
        cache = self._prefixes.get(replica)
        if cache is None:
            cache = build_prefix_cache(self._replicas[replica].model, ids)
            self._prefixes[replica] = cache
        return cache

    def _stable_prefix_ids(self) -> list[int]:
        """The ids every query starts with: the common start of two probe queries, cut after its last
        special token (``<query>``) when it has one, else one token short, so query text never merges in."""
        a, b = self.tokenize_queries(["a", "1"]).ids
        n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        common = a[:n]
        special = set(self._loaded.tokenizer.tokenizer.all_special_ids) - set(self._loaded.tokenizer.head)
        last_special = max((i for i, t in enumerate(common) if t in special), default=None)
        return common[: last_special + 1] if last_special is not None else common[:-1]

    def _embed_ids(self, ids: list[list[int]], kind: str, show: bool | None) -> np.ndarray:
        """Embed token-id lists longest first under the token budget; rows come back in input order.

        Queries that start with the cached prefix run on it; the rest run as whole prompts. Batches go
        through one queue, served by one worker per replica (the calling thread when there is one).
        """
        n = len(ids)
        out = np.empty((n, self.dimension), dtype=np.float32)
        everything = list(range(n))
        groups: list[tuple[list[int], list[int], int]] = [(everything, [len(x) for x in ids], 0)]
        prefix_ids = self._prefix_ids() if kind == "queries" and self.prefix_cache else None
        if prefix_ids is not None:
            P, window = len(prefix_ids), attention_window(self._loaded.model)
            hits = [i for i in everything if starts_with(ids[i], prefix_ids, window)]
            misses = sorted(set(everything) - set(hits))
            groups = [(hits, [len(ids[i]) - P for i in hits], P), (misses, [len(ids[i]) for i in misses], 0)]
            with self._stats_lock:
                self.cache_stats["hits"] += len(hits)
                self.cache_stats["misses"] += len(misses)
        queue = BatchQueue(groups, self.batch_size, self.max_batch_tokens)
        disable = (not show) if show is not None else (True if n <= self.batch_size else None)
        with tqdm(total=n, desc=f"Embedding {kind}", unit="text", disable=disable) as bar:

            def work(replica: int) -> None:
                self._work(replica, queue, ids, prefix_ids, out, bar)

            self._run_workers(queue, work)
        return out

    def _work(
        self,
        replica: int,
        queue: BatchQueue,
        ids: list[list[int]],
        prefix_ids: list[int] | None,
        out: np.ndarray,
        bar: Any,
    ) -> None:
        """Take batches from ``queue`` and embed them on one replica until the queue is empty."""
        loaded = self._replicas[replica]
        while (batch := queue.take()) is not None:
            with loaded.lock:
                try:
                    prefix = self._prefix_on(replica, prefix_ids) if batch.skip and prefix_ids else None
                    vectors = embed_batch(
                        loaded.model,
                        [ids[i] for i in batch.rows],
                        loaded.tokenizer.pad_id,
                        self.normalize_embeddings,
                        prefix,
                    )  # (B, H) float32
                except torch.OutOfMemoryError as e:
                    if len(batch.rows) == 1:
                        msg = (
                            f"out of memory on {loaded.device} ({loaded.dtype}) for a single sequence of "
                            f"{batch.lengths[0] + batch.skip} tokens; lower query_max_length/passage_max_length, "
                            "use dtype='float16', or use a device with more memory"
                        )
                        raise torch.OutOfMemoryError(msg) from e
                    queue.shrink(batch)  # half the budget, kept for the rest of the call; same rows again
                    if loaded.device.type == "cuda":
                        with torch.cuda.device(loaded.device):
                            torch.cuda.empty_cache()
                    continue
            out[batch.rows] = vectors.cpu().numpy()
            bar.update(len(batch.rows))
            with self._stats_lock:
                self.replica_rows[replica] += len(batch.rows)

    def _run_workers(self, queue: BatchQueue, work: Callable[[int], None]) -> None:
        """Run ``work(replica)`` for every replica; the first failure stops the rest and is raised."""
        if len(self._replicas) == 1:
            work(0)
            return
        with ThreadPoolExecutor(len(self._replicas), thread_name_prefix="bge-icl-replica") as pool:
            futures = [pool.submit(work, r) for r in range(len(self._replicas))]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            if any(f.exception() is not None for f in done):
                queue.close()
            wait(futures)
        for future in futures:
            error = future.exception()
            if error is not None:
                raise error
