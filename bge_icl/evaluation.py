"""Retrieval metrics on your own labelled queries: do these few-shot examples help, and which set helps most?

:func:`evaluate_retrieval` embeds the queries with the embedder's examples and instruction and the passages as
they are, ranks the passages of each query by cosine similarity and scores the ranking against graded relevance
judgments ("qrels") with trec_eval's measures through ``pytrec_eval`` (the ``eval`` extra), the way MTEB 2.x
does: the same measure strings (``ndcg_cut.k``, ``recall.k``, ``map_cut.k``), MTEB's own MRR@k and the same tie
order (higher score first, then the larger doc id). :func:`compare_example_sets` runs several example sets on one
set of passage vectors: passage vectors do not depend on the examples, so they are computed once.

Memory: the passage vectors are held as float32, N x dimension x 4 bytes (16 KiB a passage for bge-en-icl's 4096
dimensions: 1M passages are 16 GiB); scores are computed in blocks of at most :data:`SCORE_BLOCK` (query, passage)
pairs and only the top ``max(k_values)`` passages of each query are kept.

Example:
    >>> scores = evaluate_retrieval(emb, queries, corpus, qrels)  # doctest: +SKIP
    >>> scores["ndcg_at_10"]  # doctest: +SKIP
    0.71234
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from bge_icl.errors import FieldsPickle, in_context
from bge_icl.optional import optional_import
from bge_icl.prompts import validate_examples

if TYPE_CHECKING:
    from bge_icl.encoder import ICLEmbedder

__all__ = [
    "DEFAULT_K_VALUES",
    "METRICS",
    "SCORE_BLOCK",
    "PassageIndex",
    "RetrievalData",
    "UnjudgedQueriesWarning",
    "check_k_values",
    "compare_example_sets",
    "encode_passages",
    "evaluate_retrieval",
    "retrieval_metrics",
    "top_k",
]

DEFAULT_K_VALUES = (1, 5, 10)
METRICS = ("ndcg", "recall", "mrr", "map")
SCORE_BLOCK = 1 << 24  # most (query, passage) scores held at once: 64 MiB of float32
Qrels = Mapping[str, Mapping[str, int]]
Run = dict[str, dict[str, float]]


def _some(ids: Iterable[str], limit: int = 3) -> str:
    items = list(ids)
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (", ..." if len(items) > limit else "")


def _texts(name: str, texts: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(texts, Mapping):
        msg = f"{name} must be a mapping of id -> text, got {type(texts).__name__}"
        raise TypeError(msg)
    for key, text in texts.items():
        if not isinstance(key, str) or not isinstance(text, str):
            kinds = f"{type(key).__name__} -> {type(text).__name__}"
            msg = f"{name}[{key!r}] = {text!r}: ids and texts must be str, got {kinds}"
            raise TypeError(msg)
    return dict(texts)


class UnjudgedQueriesWarning(FieldsPickle, UserWarning):
    """Some queries have no judgments in the qrels, so they are not scored.

    Attributes:
        query_ids: The unjudged queries' ids, in the order given.
        count: How many there are.
        total: How many queries were given, judged or not.
    """

    def __init__(self, message: str, *, query_ids: Sequence[str], total: int) -> None:
        super().__init__(message)
        self.query_ids, self.count, self.total = tuple(query_ids), len(query_ids), total


def check_k_values(k_values: int | Iterable[int]) -> tuple[int, ...]:
    """The cut-offs, sorted and without repeats; one int is one cut-off.

    Raises:
        ValueError: None given, one is not a positive int, or ``k_values`` is neither an int nor an iterable.
    """
    if isinstance(k_values, (int, np.integer)) and not isinstance(k_values, bool):
        k_values = [int(k_values)]
    if isinstance(k_values, (str, bytes)) or not isinstance(k_values, Iterable):
        msg = f"k_values must be a positive int or an iterable of them, got {k_values!r}"
        raise ValueError(msg)
    given = list(k_values)
    bad = [k for k in given if isinstance(k, bool) or not isinstance(k, int) or k <= 0]
    if bad or not given:
        msg = f"k_values must be positive ints, got {given!r}" + (f" (bad: {bad!r})" if bad else " (none)")
        raise ValueError(msg)
    return tuple(sorted(set(given)))


@dataclass(frozen=True)
class RetrievalData:
    """Validated labelled retrieval data: the queries, the passages and the graded judgments.

    Build it with :meth:`from_mappings`. Queries without judgments are kept in :attr:`unjudged` and not scored
    (a BEIR ``queries.jsonl`` usually holds every split's queries, a qrels file one split's); a query whose
    judgments are all 0 is scored and scores 0, as in MTEB and trec_eval.

    Attributes:
        query_ids: The judged queries' ids, in the order given.
        query_texts: Their texts.
        doc_ids: Every passage's id, in the order given.
        doc_texts: Their texts.
        qrels: query id -> {doc id: relevance grade}; grades above 0 count as relevant.
        unjudged: Ids of the queries without judgments, in the order given.
    """

    query_ids: tuple[str, ...]
    query_texts: tuple[str, ...]
    doc_ids: tuple[str, ...]
    doc_texts: tuple[str, ...]
    qrels: dict[str, dict[str, int]]
    unjudged: tuple[str, ...]

    @classmethod
    def from_mappings(cls, queries: Mapping[str, str], corpus: Mapping[str, str], qrels: Qrels) -> RetrievalData:
        """Check ``queries`` / ``corpus`` (id -> text) against ``qrels`` (query id -> {doc id: int grade}).

        Raises:
            TypeError: An id or text is not a str, or a grade not an int.
            ValueError: The corpus is empty, no query is judged, or the qrels name a query or passage that is
                not given.
        """
        queries, corpus = _texts("queries", queries), _texts("corpus", corpus)
        if not corpus:
            msg = "the corpus is empty: pass at least one passage (id -> text)"
            raise ValueError(msg)
        clean: dict[str, dict[str, int]] = {}
        for qid, judged in qrels.items():
            if qid not in queries:
                msg = f"qrels name query {qid!r}, which is not in the {len(queries)} queries ({_some(queries)})"
                raise ValueError(msg)
            for did, grade in judged.items():
                if did not in corpus:
                    msg = f"qrels of query {qid!r} name passage {did!r}, which is not in the corpus ({_some(corpus)})"
                    raise ValueError(msg)
                if isinstance(grade, bool) or not isinstance(grade, int | np.integer):
                    msg = f"qrels[{qid!r}][{did!r}] = {grade!r}: relevance grades must be ints (0 = not relevant)"
                    raise TypeError(msg)
            if judged:
                clean[qid] = {did: int(grade) for did, grade in judged.items()}
        judged_ids = tuple(q for q in queries if q in clean)
        if not judged_ids:
            msg = f"no query has judgments: the qrels cover none of the {len(queries)} queries ({_some(queries)})"
            raise ValueError(msg)
        return cls(
            query_ids=judged_ids,
            query_texts=tuple(queries[q] for q in judged_ids),
            doc_ids=tuple(corpus),
            doc_texts=tuple(corpus.values()),
            qrels={q: clean[q] for q in judged_ids},
            unjudged=tuple(q for q in queries if q not in clean),
        )

    def warn_unjudged(self, stacklevel: int = 2) -> None:
        """Warn (:class:`UnjudgedQueriesWarning`, a ``UserWarning``) that the unjudged queries are not scored, if
        there are any."""
        if self.unjudged:
            total = len(self.unjudged) + len(self.query_ids)
            msg = f"{len(self.unjudged)} of {total} queries have no qrels and are not scored: {_some(self.unjudged)}"
            warning = UnjudgedQueriesWarning(msg, query_ids=self.unjudged, total=total)
            warnings.warn(warning, stacklevel=stacklevel + 1)


@dataclass(frozen=True)
class PassageIndex:
    """Passage vectors of a corpus, computed once and reused by every embedder with the same passage settings.

    Attributes:
        doc_ids: The passages' ids, in row order.
        vectors: (N, dimension) float32 CPU tensor, unit rows.
        fingerprint: ``embedder.fingerprint("passages")`` of the embedder that computed them: vectors are reused
            only by an embedder whose passage fingerprint is equal (examples and instructions never change it).
    """

    doc_ids: tuple[str, ...]
    vectors: torch.Tensor
    fingerprint: str


def encode_passages(embedder: ICLEmbedder, corpus: Mapping[str, str] | RetrievalData) -> PassageIndex:
    """Embed a corpus (id -> text, or a :class:`RetrievalData`'s) once, for ``evaluate_retrieval(passages=...)``."""
    ids, texts = (corpus.doc_ids, corpus.doc_texts) if isinstance(corpus, RetrievalData) else _corpus_items(corpus)
    if not ids:
        msg = "the corpus is empty: pass at least one passage (id -> text)"
        raise ValueError(msg)
    vectors = _unit(embedder.encode_corpus(list(texts), convert_to_numpy=True))  # (N, D)
    return PassageIndex(ids, vectors, embedder.fingerprint("passages"))


def _corpus_items(corpus: Mapping[str, str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    checked = _texts("corpus", corpus)
    return tuple(checked), tuple(checked.values())


def _unit(vectors: Any) -> torch.Tensor:
    """(N, D) float32 rows scaled to unit length, as MTEB's cosine similarity does (vectors may be unnormalized)."""
    return F.normalize(torch.as_tensor(np.asarray(vectors, dtype=np.float32)), p=2, dim=1)


def top_k(
    queries: torch.Tensor, passages: torch.Tensor, k: int, block: int = SCORE_BLOCK
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` highest dot products of each query row over the passage rows, in blocks of <= ``block`` scores.

    Args:
        queries: (Q, D) float32.
        passages: (N, D) float32.
        k: How many to keep (at most N are).
        block: Most scores computed at once.

    Returns:
        (Q, k') scores, highest first, and the passages' row indices (k' = min(k, N)).
    """
    n = passages.shape[0]
    k = min(k, n)
    cols = max(k, min(n, block))  # passages per block; at least k so that one merge step suffices
    rows = max(1, block // cols)  # queries per block
    values, indices = [], []
    for q0 in range(0, queries.shape[0], rows):
        q = queries[q0 : q0 + rows]  # (B, D)
        best_v = torch.empty((q.shape[0], 0))  # (B, <=k)
        best_i = torch.empty((q.shape[0], 0), dtype=torch.long)
        for p0 in range(0, n, cols):
            scores = q @ passages[p0 : p0 + cols].T  # (B, C)
            v, i = torch.topk(scores, min(k, scores.shape[1]), dim=1)  # (B, <=k)
            merged_v, merged_i = torch.cat([best_v, v], dim=1), torch.cat([best_i, i + p0], dim=1)  # (B, <=2k)
            best_v, pick = torch.topk(merged_v, min(k, merged_v.shape[1]), dim=1)
            best_i = torch.gather(merged_i, 1, pick)
        values.append(best_v)
        indices.append(best_i)
    return torch.cat(values), torch.cat(indices)  # (Q, k), (Q, k)


def retrieval_metrics(
    qrels: Qrels, run: Mapping[str, Mapping[str, float]], k_values: Sequence[int]
) -> dict[str, float]:
    """trec_eval's nDCG@k, recall@k and MAP@k (``map_cut``) and MTEB's MRR@k of a ranking, averaged over its queries.

    The same computation as ``mteb``'s ``calculate_retrieval_scores`` (without its rounding of nDCG, recall and MAP
    to 5 decimals): grades above 0 are relevant, nDCG uses the grades as gains, ties rank the larger doc id first.

    Args:
        qrels: query id -> {doc id: grade} for every query of ``run``.
        run: query id -> {doc id: score} of the retrieved passages.
        k_values: The cut-offs.

    Returns:
        ``ndcg_at_k``, ``recall_at_k``, ``mrr_at_k``, ``map_at_k`` for each ``k``.

    Raises:
        ImportError: ``pytrec_eval`` is not installed (``pip install 'bge-icl[eval]'``).
    """
    pytrec_eval = _pytrec_eval()
    ks = ",".join(str(k) for k in k_values)
    measures = {f"ndcg_cut.{ks}", f"recall.{ks}", f"map_cut.{ks}"}
    per_query = pytrec_eval.RelevanceEvaluator({q: dict(d) for q, d in qrels.items()}, measures).evaluate(run)
    out: dict[str, float] = {}
    for k in k_values:
        for name, key in (("ndcg", "ndcg_cut"), ("recall", "recall"), ("map", "map_cut")):
            out[f"{name}_at_{k}"] = sum([s[f"{key}_{k}"] for s in per_query.values()]) / len(per_query)
    for k, value in _mrr(qrels, run, k_values).items():
        out[f"mrr_at_{k}"] = value
    return {f"{m}_at_{k}": out[f"{m}_at_{k}"] for k in k_values for m in METRICS}


def _mrr(qrels: Qrels, run: Mapping[str, Mapping[str, float]], k_values: Sequence[int]) -> dict[int, float]:
    """MRR@k as ``mteb``'s ``retrieval_metrics.mrr`` computes it: rank by (score, doc id) descending."""
    per_k: dict[int, list[float]] = {k: [] for k in k_values}
    for qid, scores in run.items():
        relevant = {d for d, grade in qrels[qid].items() if grade > 0}
        ranked = [d for d, _ in sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)]
        first = next((rank for rank, d in enumerate(ranked, start=1) if d in relevant), None)
        for k in k_values:
            per_k[k].append(1.0 / first if first is not None and first <= k else 0.0)
    return {k: sum(values) / len(values) for k, values in per_k.items()}


def _pytrec_eval() -> Any:
    return optional_import("pytrec_eval", extra="eval", needed_by="retrieval metrics (trec_eval's measures)")


def _evaluate(
    embedder: ICLEmbedder, data: RetrievalData, ks: tuple[int, ...], passages: PassageIndex
) -> dict[str, float]:
    if passages.doc_ids != data.doc_ids:
        msg = (
            "passages= were computed for another corpus (other ids or order); "
            "build them with encode_passages(embedder, corpus)"
        )
        raise ValueError(msg)
    expected = embedder.fingerprint("passages")
    if passages.fingerprint != expected:
        msg = (
            f"passages= were computed with other passage settings (fingerprint {passages.fingerprint[:12]}, this "
            f"embedder's is {expected[:12]}: model, revision, dtype, dimension, normalization or passage_max_length "
            "differ); build them with encode_passages(embedder, corpus)"
        )
        raise ValueError(msg)
    queries = _unit(embedder.encode_queries(list(data.query_texts), convert_to_numpy=True))  # (Q, D)
    values, indices = top_k(queries, passages.vectors, max(ks))  # (Q, k), (Q, k)
    run: Run = {
        qid: {data.doc_ids[i]: score for i, score in zip(row_i, row_v, strict=True)}
        for qid, row_i, row_v in zip(data.query_ids, indices.tolist(), values.tolist(), strict=True)
    }
    return retrieval_metrics(data.qrels, run, ks)


def evaluate_retrieval(
    embedder: ICLEmbedder,
    queries: Mapping[str, str],
    corpus: Mapping[str, str],
    qrels: Qrels,
    k_values: int | Iterable[int] = DEFAULT_K_VALUES,
    *,
    passages: PassageIndex | None = None,
) -> dict[str, float]:
    """nDCG@k, recall@k, MRR@k and MAP@k of ``embedder`` on labelled queries, averaged over the judged queries.

    Queries are embedded with the embedder's examples and instruction, passages as they are; each query's passages
    are ranked by cosine similarity and its top ``max(k_values)`` scored against ``qrels`` as MTEB 2.x scores a
    retrieval task (see :func:`retrieval_metrics`). Queries that have no qrels are skipped, with an
    :class:`UnjudgedQueriesWarning` (fields ``query_ids``, ``count``, ``total``); a query
    whose judgments are all 0 counts, scoring 0.

    Args:
        embedder: The embedder to evaluate.
        queries: query id -> query text.
        corpus: passage id -> passage text.
        qrels: query id -> {passage id: relevance grade (int, 0 = not relevant)}.
        k_values: The cut-offs (positive ints; one int is one cut-off).
        passages: Passage vectors from :func:`encode_passages`, to reuse across calls; computed here when None.

    Returns:
        ``{"ndcg_at_1": ..., "recall_at_1": ..., "mrr_at_1": ..., "map_at_1": ..., "ndcg_at_5": ...}``.

    Raises:
        ValueError: An empty corpus, no judged query, qrels naming an unknown query or passage, a k that is not
            positive, or ``passages`` from another corpus or other passage settings.
        TypeError: An id or text that is not a str, or a grade that is not an int.
        ImportError: ``pytrec_eval`` is missing (``pip install 'bge-icl[eval]'``).
    """
    ks = check_k_values(k_values)
    _pytrec_eval()  # before any embedding
    data = RetrievalData.from_mappings(queries, corpus, qrels)
    data.warn_unjudged(stacklevel=2)
    return _evaluate(embedder, data, ks, passages or encode_passages(embedder, data))


def compare_example_sets(
    embedder: ICLEmbedder,
    example_sets: Mapping[str, Sequence[Mapping[str, str]] | None],
    queries: Mapping[str, str],
    corpus: Mapping[str, str],
    qrels: Qrels,
    k_values: int | Iterable[int] = DEFAULT_K_VALUES,
) -> dict[str, dict[str, float]]:
    """:func:`evaluate_retrieval` for each example set, the passages embedded once.

    Each set runs on ``embedder.with_examples(examples)`` (the same loaded weights; ``None`` = zero-shot); the
    instruction and every other option are ``embedder``'s.

    Args:
        embedder: The base embedder.
        example_sets: name -> few-shot examples (``[{"instruct"?, "query", "response"}, ...]``) or None.
        queries: query id -> text.
        corpus: passage id -> text.
        qrels: query id -> {passage id: int grade}.
        k_values: The cut-offs.

    Returns:
        name -> the metrics of :func:`evaluate_retrieval`, in the order of ``example_sets``.

    Raises:
        ValueError: No example set, or as :func:`evaluate_retrieval`.
        TypeError, ValueError: Malformed examples (the message names the set), before anything is embedded.
    """
    ks = check_k_values(k_values)
    if not example_sets:
        msg = "example_sets is empty: pass name -> examples (None = zero-shot), e.g. {'zero-shot': None}"
        raise ValueError(msg)
    _pytrec_eval()  # before any embedding
    data = RetrievalData.from_mappings(queries, corpus, qrels)
    data.warn_unjudged(stacklevel=2)
    for name, examples in example_sets.items():  # every set is checked before anything is embedded
        try:
            validate_examples(examples, embedder.options.query_instruction_for_retrieval)
        except (TypeError, ValueError) as e:
            raise in_context(e, f"example set {name!r}") from e
    embedders = {name: embedder.with_examples(examples) for name, examples in example_sets.items()}
    passages = encode_passages(embedder, data)
    return {name: _evaluate(each, data, ks, passages) for name, each in embedders.items()}
