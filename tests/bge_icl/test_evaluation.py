"""``bge_icl.evaluation``: retrieval metrics equal their definitions, passage vectors are reused, errors are clear."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest

from bge_icl import ICLEmbedder
from bge_icl.evaluation import (
    RetrievalData,
    UnjudgedQueriesWarning,
    compare_example_sets,
    encode_passages,
    evaluate_retrieval,
    retrieval_metrics,
    top_k,
)
from tests.conftest import NOTEBOOK_EXAMPLES
from tests.retrieval_data import CORPUS, JUDGED, QRELS, QUERIES, brute_force, ranking

pytest.importorskip("pytrec_eval")

K = (1, 3, 5, 10)
JUDGED_QUERIES = {q: QUERIES[q] for q in JUDGED}


def expected(emb: ICLEmbedder, k_values: tuple[int, ...] = K) -> dict[str, float]:
    """The metrics from their definitions, on the embedder's own vectors."""
    q = emb.encode_queries([QUERIES[i] for i in JUDGED])  # (Q, D)
    p = emb.encode_corpus(list(CORPUS.values()))  # (N, D)
    out = {}
    for k in k_values:
        per_query = [brute_force(ranking(q[n], p, list(CORPUS)), QRELS[qid], k) for n, qid in enumerate(JUDGED)]
        for metric in ("ndcg", "recall", "mrr", "map"):
            out[f"{metric}_at_{k}"] = float(np.mean([m[metric] for m in per_query]))
    return out


def max_diff(a: dict[str, float], b: dict[str, float]) -> float:
    assert a.keys() == b.keys()
    return max(abs(a[key] - b[key]) for key in a)


def test_metrics_equal_their_definitions(emb: ICLEmbedder) -> None:
    got = evaluate_retrieval(emb, JUDGED_QUERIES, CORPUS, QRELS, k_values=K)
    assert list(got) == [f"{m}_at_{k}" for k in K for m in ("ndcg", "recall", "mrr", "map")]
    assert max_diff(got, expected(emb)) <= 1e-6
    assert all(0.0 <= v <= 1.0 for v in got.values())


def test_unnormalized_vectors_are_ranked_by_cosine(emb: ICLEmbedder) -> None:
    raw = emb.with_options(normalize_embeddings=False)
    assert not np.allclose(np.linalg.norm(raw.encode_corpus(["a passage"]), axis=-1), 1.0)
    got = evaluate_retrieval(raw, JUDGED_QUERIES, CORPUS, QRELS, k_values=K)
    assert max_diff(got, expected(raw)) <= 1e-6
    assert max_diff(got, evaluate_retrieval(emb, JUDGED_QUERIES, CORPUS, QRELS, k_values=K)) <= 1e-6


def test_ties_rank_the_larger_doc_id_first() -> None:
    qrels = {"q": {"a": 1}}
    run = {"q": {"a": 0.5, "b": 0.5, "c": 0.1}}  # a and b tie: b (the larger id) ranks first, as in trec_eval/mteb
    scores = retrieval_metrics(qrels, run, (1, 2))
    assert scores["mrr_at_1"] == 0.0 and scores["mrr_at_2"] == 0.5
    assert scores["recall_at_1"] == 0.0 and scores["recall_at_2"] == 1.0
    assert scores["map_at_2"] == 0.5
    assert scores["ndcg_at_2"] == pytest.approx(1 / np.log2(3))


def test_top_k_in_small_blocks_equals_one_block() -> None:
    rng = np.random.default_rng(0)
    import torch

    q, p = (
        torch.from_numpy(rng.standard_normal((7, 5), dtype=np.float32)),
        torch.from_numpy(rng.standard_normal((23, 5), dtype=np.float32)),
    )
    whole_v, whole_i = torch.topk(q @ p.T, 4, dim=1)
    for block in (1, 6, 30, 1000):
        v, i = top_k(q, p, 4, block=block)
        assert torch.equal(i, whole_i) and torch.allclose(v, whole_v)
    v, i = top_k(q, p, 100)  # k > N: every passage
    assert i.shape == (7, 23)


def test_queries_without_qrels_are_skipped_with_a_warning(emb: ICLEmbedder) -> None:
    with pytest.warns(UserWarning, match=re.escape("1 of 9 queries have no qrels and are not scored: 'q-unjudged'")):
        got = evaluate_retrieval(emb, QUERIES, CORPUS, QRELS, k_values=K)
    assert got == evaluate_retrieval(emb, JUDGED_QUERIES, CORPUS, QRELS, k_values=K)


def test_a_query_judged_all_zero_counts_as_zero(emb: ICLEmbedder) -> None:
    qrels = {**QRELS, "q-unjudged": {"coffee": 0}}
    with_zero = evaluate_retrieval(emb, QUERIES, CORPUS, qrels, k_values=(10,))
    without = evaluate_retrieval(emb, JUDGED_QUERIES, CORPUS, QRELS, k_values=(10,))
    assert with_zero["ndcg_at_10"] == pytest.approx(without["ndcg_at_10"] * len(JUDGED) / (len(JUDGED) + 1))


def test_passage_vectors_are_encoded_once_and_reused(emb: ICLEmbedder, monkeypatch: pytest.MonkeyPatch) -> None:
    sets = {"zero-shot": None, "notebook": NOTEBOOK_EXAMPLES, "one": NOTEBOOK_EXAMPLES[:1]}
    calls: list[tuple[str, int]] = []
    for name in ("encode_queries", "encode_corpus"):
        real = getattr(ICLEmbedder, name)
        monkeypatch.setattr(ICLEmbedder, name, lambda self, texts, *a, _r=real, _n=name, **kw: (
            calls.append((_n, len(texts))), _r(self, texts, *a, **kw))[1])  # fmt: skip
    before = sum(emb.stats.replica_rows)
    compared = compare_example_sets(emb, sets, JUDGED_QUERIES, CORPUS, QRELS, k_values=K)
    assert sum(emb.stats.replica_rows) - before == len(CORPUS)  # the base embedder ran the passages, once
    assert calls == [("encode_corpus", len(CORPUS))] + [("encode_queries", len(JUDGED))] * len(sets)
    monkeypatch.undo()
    assert list(compared) == list(sets)
    for name, examples in sets.items():
        one = emb.with_examples(examples)
        assert one.fingerprint("passages") == emb.fingerprint("passages")
        assert max_diff(compared[name], evaluate_retrieval(one, JUDGED_QUERIES, CORPUS, QRELS, k_values=K)) == 0.0
    assert compared["zero-shot"] != compared["notebook"]  # the examples change the query vectors


def test_passages_can_be_passed_in(emb: ICLEmbedder) -> None:
    passages = encode_passages(emb, CORPUS)
    zero_shot = emb.with_examples(None)
    got = evaluate_retrieval(zero_shot, JUDGED_QUERIES, CORPUS, QRELS, k_values=K, passages=passages)
    assert zero_shot.stats.replica_rows == (len(JUDGED),)  # queries only: the passages came in
    assert got == evaluate_retrieval(zero_shot, JUDGED_QUERIES, CORPUS, QRELS, k_values=K)


def test_passages_from_other_settings_or_corpus_are_refused(emb: ICLEmbedder) -> None:
    passages = encode_passages(emb, CORPUS)
    short = emb.with_options(passage_max_length=64)
    with pytest.raises(ValueError, match=re.escape("passages= were computed with other passage settings")):
        evaluate_retrieval(short, JUDGED_QUERIES, CORPUS, QRELS, passages=passages)
    smaller = dict(list(CORPUS.items())[1:]) | {"protein-women": CORPUS["protein-women"]}
    with pytest.raises(ValueError, match=re.escape("passages= were computed for another corpus (other ids or order)")):
        evaluate_retrieval(emb, JUDGED_QUERIES, smaller, QRELS, passages=passages)


@pytest.mark.parametrize(
    ("queries", "corpus", "qrels", "error", "message"),
    [
        (JUDGED_QUERIES, {}, QRELS, ValueError, "the corpus is empty: pass at least one passage (id -> text)"),
        (
            JUDGED_QUERIES,
            CORPUS,
            {**QRELS, "q-x": {"apex": 1}},
            ValueError,
            "qrels name query 'q-x', which is not in the 8 queries ('q-protein', 'q-summit', 'q-interface', ...)",
        ),
        (
            JUDGED_QUERIES,
            CORPUS,
            {"q-summit": {"k2": 1}},
            ValueError,
            "qrels of query 'q-summit' name passage 'k2', which is not in the corpus "
            "('protein-women', 'protein-sources', 'protein-athletes', ...)",
        ),
        (
            JUDGED_QUERIES,
            CORPUS,
            {"q-summit": {"apex": 0.5}},
            TypeError,
            "qrels['q-summit']['apex'] = 0.5: relevance grades must be ints (0 = not relevant)",
        ),
        (
            JUDGED_QUERIES,
            CORPUS,
            {},
            ValueError,
            "no query has judgments: the qrels cover none of the 8 queries "
            "('q-protein', 'q-summit', 'q-interface', ...)",
        ),
        ({1: "a query"}, CORPUS, {}, TypeError, "queries[1] = 'a query': ids and texts must be str, got int -> str"),
    ],
    ids=["empty-corpus", "unknown-query", "unknown-doc", "float-grade", "nothing-judged", "int-id"],
)
def test_bad_data_is_named(emb: ICLEmbedder, queries, corpus, qrels, error, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=re.escape(message)):
        evaluate_retrieval(emb, queries, corpus, qrels)


@pytest.mark.parametrize(
    ("k_values", "message"),
    [
        ((0, 10), "k_values must be positive ints, got [0, 10] (bad: [0])"),
        ((), "k_values must be positive ints, got [] (none)"),
        ((5, 2.5), "k_values must be positive ints, got [5, 2.5] (bad: [2.5])"),
    ],
)
def test_bad_k_is_named(emb: ICLEmbedder, k_values: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluate_retrieval(emb, JUDGED_QUERIES, CORPUS, QRELS, k_values=k_values)


def test_no_example_set_and_bad_examples(emb: ICLEmbedder) -> None:
    with pytest.raises(ValueError, match=re.escape("example_sets is empty: pass name -> examples (None = zero-shot)")):
        compare_example_sets(emb, {}, JUDGED_QUERIES, CORPUS, QRELS)
    before = sum(emb.stats.replica_rows)
    message = "example set 'bad': examples_for_task[0] is missing 'response'; each example needs 'query' and 'response'"
    with pytest.raises(ValueError, match=re.escape(message)):
        compare_example_sets(emb, {"fine": None, "bad": [{"query": "q"}]}, JUDGED_QUERIES, CORPUS, QRELS)
    assert sum(emb.stats.replica_rows) == before  # refused before any embedding


def test_retrieval_data_keeps_order_and_names_the_unjudged() -> None:
    data = RetrievalData.from_mappings(QUERIES, CORPUS, QRELS)
    assert data.query_ids == tuple(JUDGED) and data.unjudged == ("q-unjudged",)
    assert data.doc_ids == tuple(CORPUS) and data.doc_texts == tuple(CORPUS.values())


def test_an_int_k_is_one_cutoff(emb: ICLEmbedder) -> None:
    assert evaluate_retrieval(emb, JUDGED_QUERIES, CORPUS, QRELS, k_values=10) == evaluate_retrieval(
        emb, JUDGED_QUERIES, CORPUS, QRELS, k_values=(10,)
    )
    with pytest.raises(ValueError, match=re.escape("k_values must be a positive int or an iterable of them, got '10'")):
        evaluate_retrieval(emb, JUDGED_QUERIES, CORPUS, QRELS, k_values="10")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape("k_values must be a positive int or an iterable of them, got 2.5")):
        evaluate_retrieval(emb, JUDGED_QUERIES, CORPUS, QRELS, k_values=2.5)  # type: ignore[arg-type]


def test_unjudged_queries_are_a_warning_with_fields(emb: ICLEmbedder) -> None:
    with pytest.warns(UnjudgedQueriesWarning) as record:
        compare_example_sets(emb, {"zero-shot": None}, QUERIES, CORPUS, QRELS, k_values=(1,))
    (warning,) = [w.message for w in record if isinstance(w.message, UnjudgedQueriesWarning)]
    assert (warning.query_ids, warning.count, warning.total) == (("q-unjudged",), 1, len(QUERIES))
    assert isinstance(warning, UserWarning)
    copy = pickle.loads(pickle.dumps(warning))
    assert (copy.query_ids, copy.count, copy.total, str(copy)) == (("q-unjudged",), 1, 9, str(warning))
