"""What the CLI reads: lines end at ``\\n`` and nowhere else, a BOM is dropped everywhere, bad bytes are located.

``str.splitlines()`` also breaks at form feed (pdftotext writes one at every page break), ``\\v``, ``\\x1c``-``\\x1e``,
U+0085, U+2028 and U+2029; a file holding one then gave more rows than lines, every later row shifted against its id.
The expected vectors come from the core on the lines as split at ``\\n`` by hand.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from bge_icl import WEB_SEARCH_INSTRUCTION, ICLEmbedder
from bge_icl.evaluation import compare_example_sets
from bge_icl.quickstart import EXAMPLES
from bge_icl_cli.cli import main
from bge_icl_cli.common import load_examples
from bge_icl_cli.files import read_text, split_lines
from tests.bge_icl_cli.test_cli import CPU, run
from tests.retrieval_data import CORPUS, QRELS, QUERIES

# Every character str.splitlines() breaks at besides "\n" and "\r".
BREAKS = ["\f", "\v", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
IDS = [f"U+{ord(c):04X}" for c in BREAKS]


@pytest.fixture(scope="module")
def core(tiny_dir: Path) -> ICLEmbedder:
    return ICLEmbedder(str(tiny_dir), devices="cpu", show_progress=False)


def _lines(char: str) -> list[str]:
    """Three texts, each holding ``char``: inside, at the start, at the end."""
    return [f"page one ends here{char}page two starts", f"{char}a heading after a break", f"last line{char}"]


@pytest.mark.parametrize("char", BREAKS, ids=IDS)
def test_split_lines_breaks_at_newline_only(char: str) -> None:
    text = "\r\n".join(_lines(char)) + "\n"
    assert split_lines(text) == _lines(char)
    assert len(text.splitlines()) > 3  # what the CLI used to do
    assert split_lines("a\rb\r\nc") == ["a\rb", "c"]  # a lone "\r" is text; one before "\n" is dropped
    assert split_lines("") == [] and split_lines("\n") == [""] and split_lines("a") == ["a"]


@pytest.mark.parametrize("fmt", ["txt", "jsonl"])
def test_embed_gives_one_row_per_line_whatever_the_line_holds(
    capsys: pytest.CaptureFixture[str], tiny_dir: Path, tmp_path: Path, core: ICLEmbedder, fmt: str
) -> None:
    texts = [line for char in BREAKS for line in _lines(char)]  # 24 texts, each holding a splitlines() break
    src = tmp_path / f"in.{fmt}"
    if fmt == "txt":
        src.write_bytes(("\r\n".join(texts) + "\r\n").encode())
    else:  # raw characters inside the strings, as json.dumps(..., ensure_ascii=False) writes U+0085, U+2028, U+2029
        raw = [json.dumps({"text": t}, ensure_ascii=False) for t in texts]
        raw = [line.replace("\\f", "\f").replace("\\u000b", "\v").replace("\\u001c", "\x1c").replace(
            "\\u001d", "\x1d").replace("\\u001e", "\x1e") for line in raw]  # fmt: skip
        src.write_bytes("\n".join(raw).encode())
    out = tmp_path / "out.jsonl"
    code, _, err = run(capsys, "embed", src, "-o", out, "--kind", "corpus", "--model", tiny_dir, *CPU, "-q")
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").split("\n") if line]
    assert [r["id"] for r in rows] == list(range(1, len(texts) + 1))
    np.testing.assert_allclose(np.array([r["vector"] for r in rows]), core.encode_corpus(texts), atol=1e-6)


def test_evaluate_reads_queries_corpus_and_qrels_at_newlines_only(
    capsys: pytest.CaptureFixture[str], tiny_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("pytrec_eval")
    queries = {qid: f"{text}{BREAKS[i % len(BREAKS)]}tail" for i, (qid, text) in enumerate(QUERIES.items())}
    corpus = {did: f"{text[:12]}{BREAKS[i % len(BREAKS)]}{text[12:]}" for i, (did, text) in enumerate(CORPUS.items())}
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}, ensure_ascii=False) + "\n"
                                              for i, t in queries.items()), encoding="utf-8")  # fmt: skip
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}, ensure_ascii=False) + "\r\n"
                                              for i, t in corpus.items()), encoding="utf-8")  # fmt: skip
    rows = "".join(f"{q}\t{d}\t{g}\r\n" for q, judged in QRELS.items() for d, g in judged.items())
    (tmp_path / "r.tsv").write_bytes(("query-id\tcorpus-id\tscore\r\n" + rows).encode())
    files = ["--queries", tmp_path / "q.jsonl", "--corpus", tmp_path / "c.jsonl", "--qrels", tmp_path / "r.tsv"]
    code, out, err = run(capsys, "evaluate", *files, "--json", "--model", tiny_dir, *CPU, "-q")
    assert code == 0, err
    emb = ICLEmbedder(str(tiny_dir), devices="cpu", show_progress=False,
                      query_instruction_for_retrieval=WEB_SEARCH_INSTRUCTION)  # fmt: skip
    with pytest.warns(UserWarning):
        expected = compare_example_sets(emb, {"none": None}, queries, corpus, QRELS, (1, 5, 10))
    assert json.loads(out)["results"] == expected


def test_search_reads_its_files_the_same_way(tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_bytes(b"\xef\xbb\xbfone\r\ntwo\rstill two\x0cand three\r\n")
    assert read_text(str(note)) == "one\r\ntwo\rstill two\fand three\r\n"  # no newline translation, BOM dropped
    assert split_lines(read_text(str(note))) == ["one", "two\rstill two\fand three"]


# -- encodings ---------------------------------------------------------------------------------------------


def test_a_bom_is_dropped_from_every_file_read(tmp_path: Path) -> None:
    examples = tmp_path / "examples.json"
    examples.write_bytes(b"\xef\xbb\xbf" + json.dumps(EXAMPLES).encode())
    assert load_examples(str(examples)) == EXAMPLES


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("in.txt", b"ok\nalso ok\ncaf\xe9\n", "{path} line 3 is not UTF-8: byte 0xe9 at column 4; save it as UTF-8"),
        ("in.jsonl", b'{"text": "a"}\n{"text": "\xff"}\n', "{path} line 2 is not UTF-8: byte 0xff at column 11"),
        ("in.txt", b"\xef\xbb\xbf\xe9t\xe9\n", "{path} line 1 is not UTF-8: byte 0xe9 at column 1"),
    ],
)
def test_a_byte_that_is_not_utf8_is_located_by_file_and_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, data: bytes, message: str
) -> None:
    src = tmp_path / name
    src.write_bytes(data)
    code, _, err = run(capsys, "embed", src, "-o", tmp_path / "o.npy", "--kind", "corpus", "--model",
                       tmp_path / "no-model", *CPU)  # fmt: skip
    assert code == 1
    assert message.format(path=src) in err and len(err.strip().splitlines()) == 1, err
    assert "byte offset" not in err and "position" not in err


def test_examples_files_name_the_bad_byte_and_the_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    examples = tmp_path / "latin1.json"
    examples.write_bytes('[{"query": "café", "response": "r"}]'.encode("latin-1"))
    src = tmp_path / "in.txt"
    src.write_text("a\n", encoding="utf-8")
    code, _, err = run(capsys, "embed", src, "-o", tmp_path / "o.npy", "--kind", "query", "--examples", examples,
                       "--model", tmp_path / "no-model", *CPU)  # fmt: skip
    assert code == 1
    assert f"examples file {examples} line 1 is not UTF-8: byte 0xe9 at column 16" in err, err


def test_stdin_lines_end_at_newline_only(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tiny_dir: Path, tmp_path: Path,
    core: ICLEmbedder,
) -> None:  # fmt: skip
    texts = _lines("\u2028")
    stdin = io.TextIOWrapper(io.BytesIO(("\ufeff" + "\r\n".join(texts) + "\n").encode()), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    out = tmp_path / "o.npy"
    assert main(["embed", "-", "-o", str(out), "--kind", "corpus", "--model", str(tiny_dir), *CPU, "-q"]) == 0
    capsys.readouterr()
    np.testing.assert_allclose(np.load(out), core.encode_corpus(texts), atol=1e-6)
