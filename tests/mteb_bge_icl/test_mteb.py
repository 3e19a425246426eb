"""``mteb_bge_icl``: ``mteb.evaluate`` on a local task gives each task its instruction and examples, and scores as
``bge_icl.evaluation`` does."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

mteb = pytest.importorskip("mteb")
pytest.importorskip("pytrec_eval")

from datasets import Dataset  # noqa: E402
from mteb.abstasks.retrieval import AbsTaskRetrieval  # noqa: E402
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData  # noqa: E402
from mteb.abstasks.task_metadata import TaskMetadata  # noqa: E402
from mteb.types import PromptType  # noqa: E402

from bge_icl import WEB_SEARCH_INSTRUCTION, ICLEmbedder  # noqa: E402
from bge_icl.evaluation import evaluate_retrieval  # noqa: E402
from mteb_bge_icl import BgeIclMtebModel, load_task_prompts  # noqa: E402
from tests.conftest import NOTEBOOK_EXAMPLES  # noqa: E402
from tests.retrieval_data import CORPUS, QRELS, QUERIES  # noqa: E402

TASK = "BgeIclLocalRetrieval"
K = (1, 3, 5, 10)


class LocalRetrieval(AbsTaskRetrieval):
    """The tests' labelled set as an MTEB retrieval task, loaded in memory (no download)."""

    metadata = TaskMetadata(
        name=TASK,
        description="bge-icl's small labelled retrieval set, for tests.",
        reference="https://github.com/embeddings-benchmark/mteb",
        dataset={"path": "NA", "revision": "NA"},
        type="Retrieval",
        category="t2t",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score="ndcg_at_10",
        date=("2024-01-01", "2024-12-31"),
        domains=[],
        task_subtypes=[],
        license="cc-by-4.0",
        annotations_creators="derived",
        dialect=[],
        sample_creation="found",
        bibtex_citation="",
        prompt={"query": "Retrieve the passage that answers the question."},
    )

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        split = RetrievalSplitData(
            queries=Dataset.from_list([{"id": i, "text": t} for i, t in QUERIES.items()]),
            corpus=Dataset.from_list([{"id": i, "title": "", "text": t} for i, t in CORPUS.items()]),
            relevant_docs={q: dict(d) for q, d in QRELS.items()},
            top_ranked=None,
        )
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True


@pytest.fixture(scope="module")
def emb(tiny_dir: Path) -> ICLEmbedder:
    return ICLEmbedder(str(tiny_dir), devices="cpu", show_progress=False, on_truncation="ignore")


def run_mteb(model: BgeIclMtebModel) -> dict[str, float]:
    result = mteb.evaluate(model, LocalRetrieval(), cache=None, show_progress_bar=False)
    return result.task_results[0].scores["test"][0]


def test_mteb_scores_equal_evaluate_retrieval(emb: ICLEmbedder) -> None:
    prompts = {TASK: {"instruction": WEB_SEARCH_INSTRUCTION, "examples": NOTEBOOK_EXAMPLES}}
    scores = run_mteb(BgeIclMtebModel(emb, prompts))
    same = emb.with_options(query_instruction_for_retrieval=WEB_SEARCH_INSTRUCTION, examples_for_task=NOTEBOOK_EXAMPLES)
    with pytest.warns(UserWarning, match="1 of 9 queries have no qrels"):
        ours = evaluate_retrieval(same, QUERIES, CORPUS, QRELS, k_values=K)
    # mteb rounds nDCG, recall and MAP to 5 decimals, not MRR
    rounded = [abs(round(ours[f"{m}_at_{k}"], 5) - scores[f"{m}_at_{k}"]) for k in K for m in ("ndcg", "recall", "map")]
    assert max(rounded) <= 1e-6
    assert max(abs(ours[f"mrr_at_{k}"] - scores[f"mrr_at_{k}"]) for k in K) <= 1e-6
    assert abs(ours["ndcg_at_10"] - scores["ndcg_at_10"]) <= 5e-6


def test_zero_shot_tasks_use_mteb_prompt(emb: ICLEmbedder) -> None:
    scores = run_mteb(BgeIclMtebModel(emb))
    plain = emb.with_options(query_instruction_for_retrieval="Retrieve the passage that answers the question.",
                             examples_for_task=None)  # fmt: skip
    with pytest.warns(UserWarning):
        ours = evaluate_retrieval(plain, QUERIES, CORPUS, QRELS, k_values=K)
    assert abs(ours["mrr_at_10"] - scores["mrr_at_10"]) <= 1e-6


def test_each_task_gets_its_own_cached_embedder(emb: ICLEmbedder, tmp_path: Path) -> None:
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps({TASK: {"examples": NOTEBOOK_EXAMPLES[:1]}}))
    model = BgeIclMtebModel(emb, path)
    meta = LocalRetrieval.metadata
    query_embedder = model.embedder_for(meta, PromptType.query)
    assert query_embedder is model.embedder_for(meta, PromptType.query)
    assert query_embedder.options.query_instruction_for_retrieval == "Retrieve the passage that answers the question."
    assert [e["query"] for e in query_embedder.examples] == [NOTEBOOK_EXAMPLES[0]["query"]]
    assert query_embedder.examples[0]["instruct"] == NOTEBOOK_EXAMPLES[0]["instruct"]
    assert query_embedder.replicas == emb.replicas  # the same loaded weights
    assert model.mteb_model_meta.use_instructions is True
    assert model.mteb_model_meta.embed_dim == emb.dimension
    assert model.mteb_model_meta.experiment_kwargs != BgeIclMtebModel(emb).mteb_model_meta.experiment_kwargs


@pytest.mark.parametrize(
    ("prompts", "error", "message"),
    [
        (
            {TASK: {"examples_for_task": []}},
            ValueError,
            f"task {TASK!r} has unknown key(s) ['examples_for_task']; valid keys are ('instruction', 'examples')",
        ),
        ({TASK: {"instruction": 3}}, TypeError, f"task {TASK!r}: 'instruction' is int, expected str"),
        (
            {TASK: {"examples": [{"query": "q"}]}},
            ValueError,
            f"task {TASK!r}: examples_for_task[0] is missing 'response'",
        ),
        (
            {TASK: "an instruction"},
            TypeError,
            f"task {TASK!r}: expected an object with keys ('instruction', 'examples'), got str",
        ),
        ([TASK], TypeError, "task prompts must map task names to {'instruction', 'examples'}, got list"),
    ],
)
def test_bad_task_prompts_are_named(prompts: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        load_task_prompts(prompts)


def test_a_bad_json_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "tasks.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(f"task prompts file {path} is not valid JSON")):
        load_task_prompts(path)


def test_load_builds_the_embedder(tiny_dir: Path) -> None:
    model = BgeIclMtebModel.load(str(tiny_dir), device="cpu", tasks={TASK: {}}, show_progress=False)
    assert model.model.device.type == "cpu" and model.task_prompts == {TASK: {}}
    assert model.mteb_model_meta.name == f"local/{tiny_dir.name}"


def test_without_mteb_the_import_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "mteb", None)  # import now raises ImportError
    monkeypatch.delitem(sys.modules, "mteb_bge_icl")
    with pytest.raises(ImportError, match=re.escape("install it with: pip install 'bge-icl[mteb]'")):
        importlib.import_module("mteb_bge_icl")


# -- results filed under everything that changes a vector; prompts that name no task of the run ----------------------


def test_results_are_filed_under_everything_that_changes_a_vector(emb: ICLEmbedder, tmp_path: Path) -> None:
    cache = mteb.ResultCache(tmp_path / "results")
    first = mteb.evaluate(BgeIclMtebModel(emb), LocalRetrieval(), cache=cache, show_progress_bar=False)
    short = emb.with_options(passage_max_length=8)
    cached = mteb.evaluate(BgeIclMtebModel(short), LocalRetrieval(), cache=cache, show_progress_bar=False)
    fresh = run_mteb(BgeIclMtebModel(short))  # no cache: what these settings score
    assert cached.task_results[0].scores["test"][0]["ndcg_at_10"] == fresh["ndcg_at_10"]
    assert fresh["ndcg_at_10"] != first.task_results[0].scores["test"][0]["ndcg_at_10"]


def test_the_experiment_name_follows_both_fingerprints(emb: ICLEmbedder) -> None:
    def name(embedder: ICLEmbedder, prompts: Any = None) -> Any:
        return BgeIclMtebModel(embedder, prompts).mteb_model_meta.experiment_kwargs

    base = name(emb)
    assert name(emb.with_options()) == base  # the same settings: the same results
    changes: list[dict[str, Any]] = [
        {"passage_max_length": 8},
        {"query_max_length": 16},
        {"normalize_embeddings": False},
        {"query_instruction_for_retrieval": "Find it."},
        {"examples_for_task": NOTEBOOK_EXAMPLES},
    ]
    for changed in changes:
        assert name(emb.with_options(**changed)) != base, changed
    assert name(emb.with_options(batch_size=3)) == base  # batching does not change a vector
    assert name(emb, {TASK: {"examples": NOTEBOOK_EXAMPLES}}) != base


def test_a_task_prompt_that_names_no_task_of_the_run_is_an_error(emb: ICLEmbedder) -> None:
    from mteb_bge_icl import evaluate

    model = BgeIclMtebModel(emb, {"bgeicllocalretrieval": {"examples": NOTEBOOK_EXAMPLES}, "Other": {}})
    message = (
        "the task prompts name 'bgeicllocalretrieval' (did you mean 'BgeIclLocalRetrieval'?), 'Other', which are no "
        "task of this run; its tasks: 'BgeIclLocalRetrieval'"
    )
    before = emb.stats.replica_rows
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluate(model, [LocalRetrieval()], cache=None, show_progress_bar=False)
    assert emb.stats.replica_rows == before  # refused before anything was embedded
    with pytest.raises(ValueError, match=re.escape(message)):
        model.check_task_names(LocalRetrieval())


def test_a_task_run_directly_refuses_a_prompt_spelled_otherwise(emb: ICLEmbedder) -> None:
    model = BgeIclMtebModel(emb, {"bgeiclLocalRetrieval": {"examples": NOTEBOOK_EXAMPLES}})
    message = "the task prompts name 'bgeiclLocalRetrieval', but the task is 'BgeIclLocalRetrieval'"
    with pytest.raises(ValueError, match=re.escape(message)):
        run_mteb(model)  # mteb.evaluate itself: the task would otherwise run zero-shot


def test_a_matching_run_evaluates_as_mteb_does(emb: ICLEmbedder) -> None:
    from mteb_bge_icl import evaluate

    prompts = {TASK: {"instruction": WEB_SEARCH_INSTRUCTION, "examples": NOTEBOOK_EXAMPLES}}
    ours = evaluate(BgeIclMtebModel(emb, prompts), [LocalRetrieval()], cache=None, show_progress_bar=False)
    assert ours.task_results[0].scores["test"][0] == run_mteb(BgeIclMtebModel(emb, prompts))


def test_prompts_files_with_a_bom_are_read_and_bad_bytes_named(tmp_path: Path) -> None:
    path = tmp_path / "tasks.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({TASK: {"examples": NOTEBOOK_EXAMPLES}}).encode())
    assert load_task_prompts(path) == {TASK: {"examples": NOTEBOOK_EXAMPLES}}
    text = json.dumps({TASK: {"instruction": "Trouvez le café"}}, ensure_ascii=False)
    path.write_bytes(text.encode("latin-1"))
    column = text.index("é") + 1
    message = f"task prompts file {path} is not UTF-8: byte 0xe9 on line 1, column {column}; save it as UTF-8"
    with pytest.raises(ValueError, match=re.escape(message)):
        load_task_prompts(path)
