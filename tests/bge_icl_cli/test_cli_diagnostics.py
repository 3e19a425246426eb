"""The command line words the core's errors and warnings from their fields, with each subcommand's own flags."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from bge_icl.errors import OptionTypeError, OptionValueError
from bge_icl.evaluation import UnjudgedQueriesWarning
from bge_icl.truncation import TruncationWarning
from bge_icl_cli.diagnostics import EMBED_FLAGS, FLAGS, MODEL_FLAGS, option_words, report_warnings, truncation_words
from tests.bge_icl_cli.test_cli import CPU, run
from tests.retrieval_data import write_beir


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-length", "0"], "--max-length must be a positive int, got 0"),
        (["--max-length", "2"], "--max-length=2 leaves no room for text next to the special tokens"),
        (["--max-length", "3", "--kind", "query"], "--max-length=3 leaves no room for the query"),
        (["--batch-size", "-4"], "--batch-size must be a positive int, got -4"),
        (["--devices", "cuda:7"], "--devices cuda:7 is not a device of this machine; valid: cpu"),
        (["--dtype", "fp8"], "--dtype fp8 is not supported; valid: 'auto', 'float16', "),
        (["--model", ""], "--model must name a hub id or a local checkpoint directory, got ''"),
    ],
)
def test_embed_option_errors_name_the_flag(
    capsys: pytest.CaptureFixture[str], tiny_dir: Path, tmp_path: Path, argv: list[str], message: str
) -> None:
    src = tmp_path / "in.txt"
    src.write_text("hello\nworld\n", encoding="utf-8")
    kind = [] if "--kind" in argv else ["--kind", "corpus"]
    model = [] if "--model" in argv else ["--model", str(tiny_dir)]
    devices = [] if "--devices" in argv else CPU
    code, _, err = run(capsys, "embed", src, "-o", tmp_path / "o.npy", *kind, *model, *devices, "-q", *argv)
    assert code == 1, err
    assert err.startswith(f"bge-icl: error: {message}") and len(err.splitlines()) == 1, err
    assert "_length" not in err and "batch_size" not in err and "devices=" not in err and "model_name" not in err


def test_evaluate_names_its_own_length_flags(capsys: pytest.CaptureFixture[str], tiny_dir: Path,
                                             tmp_path: Path) -> None:  # fmt: skip
    pytest.importorskip("pytrec_eval")
    queries, corpus, qrels = write_beir(tmp_path)
    files = ["--queries", queries, "--corpus", corpus, "--qrels", qrels]
    code, _, err = run(capsys, "evaluate", *files, "--query-max-length", "3", "--model", tiny_dir, *CPU, "-q")
    assert code == 1
    assert err.startswith("bge-icl: error: --query-max-length=3 leaves no room for the query"), err


def test_words_come_from_the_fields_not_the_message() -> None:
    # The messages here are nonsense: only the fields can have made the words.
    # The rule broken is a field too (a positive value can break another rule of the same option).
    assert option_words(OptionValueError("zzz", option="passage_max_length", value=0, rule="positive"), FLAGS) == (
        "--passage-max-length must be a positive int, got 0"
    )
    assert option_words(OptionValueError("zzz", option="passage_max_length", value=0, rule="positive"),
                        EMBED_FLAGS) == "--max-length must be a positive int, got 0"  # fmt: skip
    assert option_words(OptionValueError("zzz", option="query_max_length", value=5, rule="room"), FLAGS).startswith(
        "--query-max-length=5 leaves no room for the query"
    )
    # An option the subcommand does not set keeps the core's words (one line).
    assert option_words(OptionTypeError("no such\noption", option="prefix_cache"), MODEL_FLAGS) == "no such option"
    report = TruncationWarning("zzz", indices=[2, 5], total=7, kind="queries", option="query_max_length", limit=9)
    assert truncation_words(report, FLAGS) == (
        "2 of 7 queries exceeded --query-max-length=9 tokens and were truncated (first: item 2)"
    )
    assert truncation_words(report, MODEL_FLAGS, ids=["a", "b", "c"]) == (
        "2 of 7 queries exceeded 9 tokens and were truncated (first: id c)"
    )


def test_report_warnings_reads_the_classes(capsys: pytest.CaptureFixture[str]) -> None:
    report = TruncationWarning("zzz", indices=[0], total=3, kind="passages", option="passage_max_length", limit=8)
    unjudged = UnjudgedQueriesWarning("have no qrels", query_ids=["q9"], total=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn(report, stacklevel=1)
        warnings.warn(unjudged, stacklevel=1)
        warnings.warn("something\nelse", UserWarning, stacklevel=1)
    assert report_warnings(caught, EMBED_FLAGS) == 1
    assert capsys.readouterr().err.splitlines() == [
        "bge-icl: warning: 1 of 3 passages exceeded --max-length=8 tokens and were truncated (first: item 0)",
        "bge-icl: warning: something else",
    ]
