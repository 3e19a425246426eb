"""``bge-icl evaluate``: the numbers of ``compare_example_sets``, a table, one-line errors naming file and line."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest

from bge_icl import WEB_SEARCH_INSTRUCTION, ICLEmbedder
from bge_icl.evaluation import compare_example_sets
from bge_icl_cli.evaluate import passage_text
from tests.bge_icl_cli.test_cli import CPU, run
from tests.conftest import NOTEBOOK_EXAMPLES
from tests.retrieval_data import CORPUS, JUDGED, QRELS, QUERIES, write_beir

pytest.importorskip("pytrec_eval")


@pytest.fixture
def beir(tmp_path: Path) -> list[str]:
    queries, corpus, qrels = write_beir(tmp_path)
    return ["--queries", str(queries), "--corpus", str(corpus), "--qrels", str(qrels)]


def evaluate(capsys: pytest.CaptureFixture[str], tiny_dir: Path, *argv: str) -> tuple[int, str, str]:
    return run(capsys, "evaluate", *argv, "--model", tiny_dir, *CPU, "-q")


def test_json_equals_the_python_api(
    capsys: pytest.CaptureFixture[str], tiny_dir: Path, beir: list[str], tmp_path: Path
) -> None:
    examples_file = tmp_path / "mine.json"
    examples_file.write_text(json.dumps(NOTEBOOK_EXAMPLES[:1]))
    sets = ["--examples", "none", "--examples", "web-search", "--examples", str(examples_file)]
    code, out, err = evaluate(capsys, tiny_dir, *beir, *sets, "--k", "10,1,3", "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got["queries"] == 8 and got["unjudged_queries"] == 1 and got["passages"] == len(CORPUS)
    assert got["k_values"] == [1, 3, 10]
    assert "bge-icl: 1 of 9 queries have no qrels and are not scored" in err
    emb = ICLEmbedder(
        str(tiny_dir), devices="cpu", show_progress=False, query_instruction_for_retrieval=WEB_SEARCH_INSTRUCTION
    )
    expected_sets = {"none": None, "web-search": NOTEBOOK_EXAMPLES, str(examples_file): NOTEBOOK_EXAMPLES[:1]}
    with pytest.warns(UserWarning, match="have no qrels"):
        expected = compare_example_sets(emb, expected_sets, QUERIES, CORPUS, QRELS, (1, 3, 10))
    assert got["results"] == expected
    assert got["results"]["none"] != got["results"]["web-search"]


def test_table_by_default_zero_shot(capsys: pytest.CaptureFixture[str], tiny_dir: Path, beir: list[str]) -> None:
    code, out, err = evaluate(capsys, tiny_dir, *beir, "--k", "5")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"8 judged queries, {len(CORPUS)} passages; instruction: {WEB_SEARCH_INSTRUCTION!r}"
    assert lines[1].split() == ["examples", "nDCG@5", "recall@5", "MRR@5", "MAP@5"]
    assert lines[2].split()[0] == "none" and len(lines) == 3
    assert all(0 <= float(cell) <= 1 for cell in lines[2].split()[1:])


def test_a_title_goes_before_the_text_as_in_mteb() -> None:
    assert passage_text("Everest", " The highest mountain. ") == "Everest  The highest mountain."
    assert passage_text("", " The highest mountain. ") == "The highest mountain."
    assert passage_text(None, "text") == "text"


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("which", "content", "message"),
    [
        ("queries", '{"_id": "q1", "text": "a"}\n{oops\n', "queries.jsonl line 2 is not valid JSON"),
        ("queries", '["q1", "a"]\n', "queries.jsonl line 1 is a JSON list, expected an object"),
        ("queries", '{"text": "a"}\n', 'queries.jsonl line 1 has no string "_id" (fields: text)'),
        ("corpus", '{"_id": "d1", "body": "a"}\n', 'corpus.jsonl line 1 has no string "text" (fields: _id, body)'),
        ("corpus", '{"_id": "d1", "text": "a"}\n\n{"_id": "d1", "text": "b"}\n',
         "corpus.jsonl line 3 repeats _id 'd1' (first on line 1)"),
        ("corpus", "\n\n", "corpus.jsonl has no records"),
        ("qrels", "q-summit\tapex\t1\n",
         "qrels.tsv line 1 is not the header: expected 'query-id<TAB>corpus-id<TAB>score', got 'q-summit\\tapex\\t1'"),
        ("qrels", "query-id\tcorpus-id\tscore\nq-summit apex 1\n",
         "qrels.tsv line 2 has 1 tab-separated fields, expected 3: query-id, corpus-id, score"),
        ("qrels", "query-id\tcorpus-id\tscore\nq-summit\tapex\thigh\n",
         "qrels.tsv line 2: score 'high' is not an integer"),
        ("qrels", "query-id\tcorpus-id\tscore\n\nq-nope\tapex\t1\n",
         "qrels.tsv line 3: query 'q-nope' is not in the queries (9 ids: 'q-protein', 'q-summit', 'q-interface', ...)"),
        ("qrels", "query-id\tcorpus-id\tscore\nq-summit\tk2\t1\n",
         "qrels.tsv line 2: passage 'k2' is not in the corpus (24 ids: 'protein-women', 'protein-sources', "),
        ("qrels", "query-id\tcorpus-id\tscore\nq-summit\tapex\t1\nq-summit\tapex\t2\n",
         "qrels.tsv line 3 judges query 'q-summit' / passage 'apex' a second time"),
        ("qrels", "query-id\tcorpus-id\tscore\n", "qrels.tsv has a header but no judgments"),
        ("qrels", "", "qrels.tsv is empty: expected a header line"),
    ],
)  # fmt: skip
def test_bad_files_are_one_line_naming_file_and_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, which: str, content: str, message: str
) -> None:
    queries, corpus, qrels = write_beir(tmp_path)
    files = {"queries": queries, "corpus": corpus, "qrels": qrels}
    files[which] = Path(_write(tmp_path / files[which].name, content))
    argv = [f"--{name}" if i % 2 == 0 else str(files[name]) for name in files for i in range(2)]
    code, _, err = run(capsys, "evaluate", *argv, "--model", tmp_path / "no-model", *CPU)  # fails before loading
    assert code == 1
    assert err.startswith("bge-icl: error: ") and len(err.strip().splitlines()) == 1
    assert message in err, err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--k", "0,5"], "--k must be positive integers separated by commas, like 1,5,10; got '0,5'"),
        (["--k", "five"], "--k must be positive integers separated by commas, like 1,5,10; got 'five'"),
        (["--examples", "websearch"], "unknown example set 'websearch': bundled sets are web-search"),
        (["--examples", "none", "--examples", "none"], "--examples none is given twice"),
        (["--examples", "missing.json"], "examples file missing.json does not exist"),
    ],
)
def test_bad_options_are_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, beir: list[str], extra: list[str], message: str
) -> None:
    code, _, err = run(capsys, "evaluate", *beir, *extra, "--model", tmp_path / "no-model", *CPU)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1


def test_missing_file_and_missing_pytrec_eval(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, beir: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = [*beir[:3], str(tmp_path / "nope.jsonl"), *beir[4:]]
    code, _, err = run(capsys, "evaluate", *argv, "--model", tmp_path / "no-model", *CPU)
    assert code == 1 and f"input file {tmp_path / 'nope.jsonl'} does not exist" in err
    monkeypatch.setitem(sys.modules, "pytrec_eval", None)  # import now raises ImportError
    code, _, err = run(capsys, "evaluate", *beir, "--model", tmp_path / "no-model", *CPU)
    assert code == 1 and "bge-icl evaluate needs pytrec_eval: pip install 'bge-icl[eval]'" in err


def test_help_names_evaluate(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "{demo,embed,search,evaluate,serve}" in out
    code, out, _ = run(capsys, "evaluate", "--help")
    assert code == 0 and "--qrels" in out and "--examples NAME|FILE|none" in out


# -- a BEIR dataset folder, and the batching flags of embed ------------------------------------------------------


@pytest.fixture
def beir_folder(tmp_path: Path) -> Path:
    """BEIR's layout: corpus.jsonl, queries.jsonl, qrels/test.tsv, and a dev split judging two queries."""
    folder = tmp_path / "my-dataset"
    (folder / "qrels").mkdir(parents=True)
    _, _, qrels = write_beir(folder)
    qrels.rename(folder / "qrels" / "test.tsv")
    dev = [f"{q}\t{d}\t{g}" for q in ("q-protein", "q-summit") for d, g in QRELS[q].items()]
    (folder / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(dev) + "\n")
    return folder


def _python_api(tiny_dir: Path, qrels: dict[str, dict[str, int]], **options: int) -> dict[str, dict[str, float]]:
    emb = ICLEmbedder(str(tiny_dir), devices="cpu", show_progress=False, on_truncation="ignore",
                      query_instruction_for_retrieval=WEB_SEARCH_INSTRUCTION, **options)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compare_example_sets(emb, {"none": None}, QUERIES, CORPUS, qrels, (1, 5, 10))


def test_a_beir_dataset_folder(capsys: pytest.CaptureFixture[str], tiny_dir: Path, beir_folder: Path) -> None:
    code, out, err = evaluate(capsys, tiny_dir, "--data", str(beir_folder), "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got["queries"] == 8 and got["results"] == _python_api(tiny_dir, QRELS)
    code, out, err = evaluate(capsys, tiny_dir, "--data", str(beir_folder), "--split", "dev", "--json")
    assert code == 0, err
    dev = {q: QRELS[q] for q in ("q-protein", "q-summit")}
    assert json.loads(out)["queries"] == 2 and json.loads(out)["results"] == _python_api(tiny_dir, dev)
    assert "bge-icl: 7 of 9 queries have no qrels and are not scored" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "{folder}", "--split", "train"],
         "--data {folder} has no qrels/train.tsv (splits there: dev, test); pick one with --split"),
        (["--data", "{folder}/nope"],
         "--data {folder}/nope is not a folder (BEIR's layout: corpus.jsonl, queries.jsonl, qrels/<split>.tsv)"),
        (["--data", "{folder}", "--queries", "{folder}/queries.jsonl"],
         "--data DIR replaces --queries, --corpus and --qrels; give one or the other"),
        (["--queries", "{folder}/queries.jsonl"],
         "give --data DIR (a BEIR dataset folder) or --queries, --corpus and --qrels; missing --corpus, --qrels"),
        ([], "give --data DIR (a BEIR dataset folder) or --queries, --corpus and --qrels; missing --queries, "),
        (["--queries", "{folder}/queries.jsonl", "--corpus", "{folder}/corpus.jsonl", "--qrels",
          "{folder}/qrels/test.tsv", "--split", "dev"], "--split picks qrels/<split>.tsv in --data DIR"),
        (["--data", "{folder}", "--passage-max-length", "0"], "--passage-max-length must be a positive int, got 0"),
        (["--data", "{folder}", "--batch-size", "-1"], "--batch-size must be a positive int, got -1"),
    ],
)  # fmt: skip
def test_bad_dataset_arguments_are_one_line_before_loading(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, beir_folder: Path, argv: list[str], message: str
) -> None:
    argv = [a.format(folder=beir_folder) for a in argv]
    code, _, err = run(capsys, "evaluate", *argv, "--model", tmp_path / "no-model", *CPU)  # exit 2 if it loaded
    assert code == 1, err
    assert err.startswith(f"bge-icl: error: {message.format(folder=beir_folder)}") and len(err.splitlines()) == 1


def test_length_and_batch_flags_as_in_embed(capsys: pytest.CaptureFixture[str], tiny_dir: Path,
                                             beir_folder: Path) -> None:  # fmt: skip
    limits = ["--passage-max-length", "16", "--query-max-length", "24", "--batch-size", "3"]
    code, out, err = evaluate(capsys, tiny_dir, "--data", str(beir_folder), *limits, "--json")
    assert code == 0, err
    expected = _python_api(tiny_dir, QRELS, passage_max_length=16, query_max_length=24)
    assert json.loads(out)["results"] == expected
    assert expected != _python_api(tiny_dir, QRELS)  # the limits changed the vectors
    short = ICLEmbedder(str(tiny_dir), devices="cpu", passage_max_length=16, query_max_length=24,
                        query_instruction_for_retrieval=WEB_SEARCH_INSTRUCTION)  # fmt: skip
    cut_passages = short.tokenize_corpus(list(CORPUS.values())).truncated
    cut_queries = short.tokenize_queries([QUERIES[q] for q in JUDGED]).truncated
    assert cut_passages and cut_queries
    assert [line for line in err.splitlines() if "exceeded" in line] == [
        f"bge-icl: warning: {len(cut_passages)} of {len(CORPUS)} passages exceeded --passage-max-length=16 tokens "
        f"and were truncated (first: item {cut_passages[0]})",
        f"bge-icl: warning: {len(cut_queries)} of {len(JUDGED)} queries exceeded --query-max-length=24 tokens "
        f"and were truncated (first: item {cut_queries[0]})",
    ]
    assert "_length" not in err and "have no qrels and are not scored: " not in err  # said once, as the CLI says it
