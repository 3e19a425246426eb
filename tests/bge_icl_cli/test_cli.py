"""The ``bge-icl`` command line: every subcommand and every error path, on the tiny checkpoint."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bge_icl import WEB_SEARCH_INSTRUCTION, ICLEmbedder
from bge_icl.quickstart import DOCUMENTS, EXAMPLES, QUERIES
from bge_icl_cli.cli import main, sample_corpus
from bge_icl_cli.common import bundled_example_sets, load_examples

CPU = ["--devices", "cpu"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.fixture
def texts_txt(tmp_path: Path) -> Path:
    path = tmp_path / "texts.txt"
    path.write_text("how much protein should a female eat\n\n   \nsummit define\n", encoding="utf-8")
    return path


@pytest.fixture
def records_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "records.jsonl"
    rows = [{"id": "p1", "body": DOCUMENTS[0]}, {"body": DOCUMENTS[1], "other": 1}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    return path


# -- bundled data ------------------------------------------------------------------------------------


def test_bundled_data() -> None:
    assert "web-search" in bundled_example_sets()
    assert load_examples("web-search") == EXAMPLES  # the model card's two examples
    corpus = sample_corpus()
    assert len(corpus) >= 12
    assert len({p["id"] for p in corpus}) == len(corpus)
    assert all(isinstance(p["text"], str) and p["text"] for p in corpus)


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "demo" in out and "embed" in out and "search" in out


# -- embed -------------------------------------------------------------------------------------------


def test_embed_txt_to_npy(capsys: pytest.CaptureFixture[str], tiny_dir: Path, texts_txt: Path, tmp_path: Path) -> None:
    out_path = tmp_path / "q.npy"
    code, out, err = run(
        capsys,
        "embed",
        texts_txt,
        "-o",
        out_path,
        "--kind",
        "query",
        "--examples",
        "web-search",
        "--model",
        tiny_dir,
        *CPU,
    )
    assert code == 0, err
    vectors = np.load(out_path)
    assert vectors.shape == (2, 64) and vectors.dtype == np.float32
    assert "wrote 2 x 64 query vectors" in out
    assert "truncated" not in err  # the count is printed only when something was cut
    assert "Embedding queries" in err  # the progress bar is on
    emb = ICLEmbedder(
        str(tiny_dir), examples_for_task=EXAMPLES, query_instruction_for_retrieval=WEB_SEARCH_INSTRUCTION, devices="cpu"
    )
    np.testing.assert_allclose(vectors, emb.encode_queries(QUERIES), atol=1e-6)


def test_embed_jsonl_to_jsonl(
    capsys: pytest.CaptureFixture[str], tiny_dir: Path, records_jsonl: Path, tmp_path: Path
) -> None:
    out_path = tmp_path / "d.jsonl"
    code, out, err = run(
        capsys, "embed", records_jsonl, "-o", out_path, "--kind", "corpus", "--field", "body", "--model", tiny_dir, *CPU
    )
    assert code == 0, err
    lines = out_path.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["id"] for r in rows] == ["p1", 2]  # the record's id, else its line number
    assert all(len(r["vector"]) == 64 for r in rows)
    expected = ICLEmbedder(str(tiny_dir), devices="cpu").encode_corpus(DOCUMENTS)
    np.testing.assert_allclose(np.array([r["vector"] for r in rows]), expected, atol=1e-6)
    assert "wrote 2 x 64 corpus vectors" in out


def test_embed_examples_file_equals_bundled_set(
    capsys: pytest.CaptureFixture[str], tiny_dir: Path, texts_txt: Path, tmp_path: Path
) -> None:
    examples_file = tmp_path / "examples.json"
    examples_file.write_text(json.dumps(EXAMPLES), encoding="utf-8")
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    for spec, path in ((str(examples_file), a), ("web-search", b)):
        code, _, err = run(
            capsys, "embed", texts_txt, "-o", path, "--kind", "query", "--examples", spec, "--model", tiny_dir, *CPU
        )
        assert code == 0, err
    np.testing.assert_array_equal(np.load(a), np.load(b))


def test_embed_reports_truncation(capsys: pytest.CaptureFixture[str], tiny_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "long.txt"
    src.write_text("short passage\n" + "word " * 200 + "\n", encoding="utf-8")
    code, _, err = run(
        capsys,
        "embed",
        src,
        "-o",
        tmp_path / "v.npy",
        "--kind",
        "corpus",
        "--max-length",
        "32",
        "--model",
        tiny_dir,
        *CPU,
    )
    assert code == 0
    assert "1 of 2 passages exceeded --max-length=32 tokens" in err
    assert "1 of 2 texts truncated" in err
    assert np.load(tmp_path / "v.npy").shape == (2, 64)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (lambda d: d / "missing.txt", [], "does not exist"),
        (lambda d: _write(d / "in.csv", "a\n"), [], "must be a .txt"),
        (lambda d: _write(d / "in.txt", "\n \n"), [], "has no texts"),
        (lambda d: _write(d / "in.jsonl", '{"text": "a"}\n{not json\n'), [], "line 2 is not valid JSON"),
        (lambda d: _write(d / "in.jsonl", '["a"]\n'), [], "line 1 is a JSON list, expected an object"),
        (lambda d: _write(d / "in.jsonl", '{"body": "a"}\n'), [], "line 1 has no field 'text' (fields: body)"),
        (lambda d: _write(d / "in.jsonl", '{"text": 3}\n'), [], "field 'text' is int, expected a string"),
        (lambda d: _write(d / "in.txt", "a\n"), ["--examples", "nope"], "unknown example set 'nope'"),
        (lambda d: _write(d / "in.txt", "a\n"), ["--examples", "missing.json"], "examples file missing.json does not"),
        (lambda d: _write(d / "in.txt", "a\n"), ["--examples", "{bad}"], "is not valid JSON"),
        (lambda d: _write(d / "in.txt", "a\n"), ["--examples", "{list}"], "is missing 'response'"),
        (lambda d: _write(d / "in.txt", "a\n"), ["--examples", "{dict}"], "expected a JSON list"),
        (lambda d: _write(d / "in.txt", "a\n"), ["--dtype", "int8"], "--dtype int8 is not supported"),
        (lambda d: _write(d / "in.txt", "a\n"), ["--kind", "both"], "invalid choice: 'both'"),
    ],
    ids=[
        "missing-input",
        "bad-suffix",
        "no-texts",
        "bad-json-line",
        "not-an-object",
        "wrong-field",
        "non-string-field",
        "unknown-example-set",
        "missing-examples-file",
        "examples-bad-json",
        "examples-missing-key",
        "examples-not-a-list",
        "bad-dtype",
        "bad-kind",
    ],
)
def test_embed_errors(
    capsys: pytest.CaptureFixture[str], tiny_dir: Path, tmp_path: Path, setup, args: list[str], message: str
) -> None:
    src = setup(tmp_path)
    files = {
        "{bad}": _write(tmp_path / "bad.json", "[{"),
        "{list}": _write(tmp_path / "list.json", json.dumps([{"query": "q"}])),
        "{dict}": _write(tmp_path / "dict.json", json.dumps({"query": "q", "response": "r"})),
    }
    args = [str(files.get(a, a)) for a in args]
    kind = [] if "--kind" in args else ["--kind", "corpus"]
    code, _, err = run(capsys, "embed", src, "-o", tmp_path / "out.npy", *kind, *args, "--model", tiny_dir, *CPU)
    assert code == 1
    assert message in err
    assert err.startswith("bge-icl: error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.npy").exists()


@pytest.mark.parametrize(
    ("output", "message"), [("out.csv", "must end in .npy"), ("no/such/dir/out.npy", "does not exist")]
)
def test_embed_bad_output(
    capsys: pytest.CaptureFixture[str], texts_txt: Path, tmp_path: Path, output: str, message: str
) -> None:
    code, _, err = run(capsys, "embed", texts_txt, "-o", tmp_path / output, "--kind", "corpus")
    assert code == 1 and message in err


@pytest.mark.parametrize("argv", [[], ["embed"], ["embed", "x.txt", "--kind", "corpus"], ["frobnicate"]])
def test_usage_errors_exit_1(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert err.startswith("bge-icl: error: ") and "--help" in err


def test_model_that_cannot_load_exits_2(capsys: pytest.CaptureFixture[str], texts_txt: Path, tmp_path: Path) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    code, _, err = run(capsys, "embed", texts_txt, "-o", tmp_path / "o.npy", "--kind", "corpus", "--model", empty, *CPU)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "cannot load model" in err and "--model PATH" in err and "hf download" in err


# -- search ------------------------------------------------------------------------------------------


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    _write(folder / "protein.md", "# Protein\n\n" + DOCUMENTS[0])
    _write(folder / "sub" / "summit.txt", DOCUMENTS[1])
    _write(folder / "ignored.csv", "not searched")
    return folder


def test_search(capsys: pytest.CaptureFixture[str], tiny_dir: Path, notes: Path) -> None:
    pytest.importorskip("langchain_text_splitters")
    code, out, err = run(
        capsys, "search", notes, "--query", "summit define", "-k", "2", "--chunk-size", "120", "--model", tiny_dir, *CPU
    )
    assert code == 0, err
    lines = out.strip().splitlines()
    assert re.match(r"\d+ chunks from 2 file\(s\); top 2 for 'summit define':$", lines[0])
    hits = lines[1:]
    assert len(hits) == 2
    for rank, line in enumerate(hits, start=1):
        fields = line.split()
        assert fields[0] == f"{rank}."
        assert -1.0 <= float(fields[1]) <= 1.0
        assert fields[2].endswith(("protein.md", "summit.txt"))
    assert float(hits[0].split()[1]) >= float(hits[1].split()[1])


def test_search_single_file_with_examples(capsys: pytest.CaptureFixture[str], tiny_dir: Path, notes: Path) -> None:
    pytest.importorskip("langchain_text_splitters")
    target = notes / "sub" / "summit.txt"
    code, out, _ = run(capsys, "search", target, "--query", "q", "--examples", "web-search", "--model", tiny_dir, *CPU)
    assert code == 0
    assert out.startswith("1 chunks from 1 file(s); top 1")
    assert str(target) in out


@pytest.mark.parametrize(
    ("target", "extra", "message"),
    [
        ("missing.md", [], "does not exist"),
        ("ignored.csv", [], "search reads .txt and .md files"),
        ("empty", [], "no .txt or .md files"),
        ("blank.md", [], "the files hold no text"),
        ("protein.md", ["-k", "0"], "-k must be positive"),
        ("protein.md", ["--chunk-size", "0"], "--chunk-size must be positive"),
        ("protein.md", ["--chunk-size", "50", "--chunk-overlap", "50"], "--chunk-overlap must be between 0 and"),
        ("protein.md", ["--examples", "nope"], "unknown example set"),
    ],
)
def test_search_errors(
    capsys: pytest.CaptureFixture[str], tiny_dir: Path, notes: Path, target: str, extra: list[str], message: str
) -> None:
    pytest.importorskip("langchain_text_splitters")
    (notes / "empty").mkdir()
    _write(notes / "blank.md", "   \n")
    code, _, err = run(capsys, "search", notes / target, "--query", "q", *extra, "--model", tiny_dir, *CPU)
    assert code == 1 and message in err


def test_search_without_text_splitters(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, notes: Path
) -> None:
    monkeypatch.setitem(sys.modules, "langchain_text_splitters", None)  # import now raises ImportError
    code, _, err = run(capsys, "search", notes, "--query", "q")
    assert code == 1
    assert "needs langchain_text_splitters: pip install 'bge-icl[langchain]'" in err


# -- demo --------------------------------------------------------------------------------------------


def test_demo(capsys: pytest.CaptureFixture[str], tiny_dir: Path) -> None:
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    code, out, err = run(capsys, "demo", "--model", tiny_dir, *CPU)
    assert code == 0, err
    emb = ICLEmbedder(
        str(tiny_dir), examples_for_task=EXAMPLES, query_instruction_for_retrieval=WEB_SEARCH_INSTRUCTION, devices="cpu"
    )
    sim = emb.encode_queries(QUERIES) @ emb.encode_corpus(DOCUMENTS).T
    for query, row in zip(QUERIES, sim, strict=True):
        line = next(line for line in out.splitlines() if line.strip().startswith(repr(query)))
        assert line.split()[-2:] == [f"{s:.4f}" for s in row]
    assert "[[0.6064, 0.302], [0.257, 0.5366]]" in out
    assert out.count("LangChain :") == 2 and out.count("LlamaIndex:") == 2
    ids = {p["id"] for p in sample_corpus()}
    for line in out.splitlines():
        if "LangChain :" in line or "LlamaIndex:" in line:
            hits = line.split(":", 1)[1].split(",")
            assert len(hits) == 3 and all(h.split()[0] in ids for h in hits)
    assert out.strip().endswith("LangChain and LlamaIndex agree: yes")


@pytest.mark.parametrize("missing", ["langchain_bge_icl", "llamaindex_bge_icl"])
def test_demo_without_adapters(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tiny_dir: Path, missing: str
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)
    code, _, err = run(capsys, "demo", "--model", tiny_dir, *CPU)
    assert code == 1
    assert "pip install 'bge-icl[all]'" in err and len(err.strip().splitlines()) == 1


def test_demo_model_missing_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    code, _, err = run(capsys, "demo", "--model", tmp_path, *CPU)
    assert code == 2 and "--model PATH" in err


def test_python_m_bge_icl_cli_demo(tiny_dir: Path) -> None:
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "bge_icl_cli", "demo", "--model", str(tiny_dir), "--devices", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "LangChain and LlamaIndex agree: yes" in proc.stdout


def test_core_and_cli_do_not_import_adapters() -> None:
    code = (
        "import sys, bge_icl, bge_icl_cli.cli\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('langchain', 'llama')))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
