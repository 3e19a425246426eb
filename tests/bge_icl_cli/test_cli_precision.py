"""``bge-icl embed --precision`` / ``--calibration``: the CLI writes what ``bge_icl.precision`` computes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bge_icl import WEB_SEARCH_INSTRUCTION, ICLEmbedder
from bge_icl.precision import PRECISIONS, calibration_ranges, quantize
from bge_icl.quickstart import DOCUMENTS, EXAMPLES, QUERIES
from bge_icl_cli.cli import PRECISION_CHOICES
from tests.bge_icl_cli.test_cli import CPU, run

pytest.importorskip("sentence_transformers")


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    corpus, queries = tmp_path / "corpus.txt", tmp_path / "queries.txt"
    corpus.write_text("\n".join([*DOCUMENTS, "summits are the highest points", "protein needs vary"]) + "\n")
    queries.write_text("\n".join(QUERIES) + "\n")
    return corpus, queries


def test_int8_corpus_writes_a_calibration_that_the_query_run_reuses(
    capsys: pytest.CaptureFixture[str], tiny_dir: Path, files: tuple[Path, Path], tmp_path: Path
) -> None:
    corpus, queries = files
    ranges_path = tmp_path / "ranges.npy"
    common = ["--precision", "int8", "--calibration", ranges_path, "--model", tiny_dir, *CPU]
    code, out, err = run(capsys, "embed", corpus, "-o", tmp_path / "c.npy", "--kind", "corpus", *common)
    assert code == 0, err
    assert f"wrote the int8 calibration (per-dimension min and max) to {ranges_path}" in err
    assert "wrote 4 x 64 corpus vectors (int8)" in out
    emb = ICLEmbedder(str(tiny_dir), examples_for_task=EXAMPLES, query_instruction_for_retrieval=WEB_SEARCH_INSTRUCTION,
                      devices="cpu")  # fmt: skip
    floats = emb.encode_corpus(corpus.read_text().splitlines())
    ranges = calibration_ranges(floats)
    np.testing.assert_allclose(np.load(ranges_path), ranges, atol=1e-6)
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), quantize(floats, "int8", ranges))

    code, out, err = run(capsys, "embed", queries, "-o", tmp_path / "q.npy", "--kind", "query", "--examples",
                         "web-search", *common)  # fmt: skip
    assert code == 0, err
    assert "calibration" not in err  # read, not written
    np.testing.assert_array_equal(np.load(tmp_path / "q.npy"), quantize(emb.encode_queries(QUERIES), "int8", ranges))


def test_ubinary_to_jsonl(capsys: pytest.CaptureFixture[str], tiny_dir: Path, files: tuple[Path, Path],
                          tmp_path: Path) -> None:  # fmt: skip
    out_path = tmp_path / "c.jsonl"
    code, _, err = run(capsys, "embed", files[0], "-o", out_path, "--kind", "corpus", "--precision", "ubinary",
                       "--model", tiny_dir, *CPU)  # fmt: skip
    assert code == 0, err
    rows = [json.loads(line)["vector"] for line in out_path.read_text().splitlines()]
    floats = ICLEmbedder(str(tiny_dir), devices="cpu").encode_corpus(files[0].read_text().splitlines())
    assert rows == quantize(floats, "ubinary").tolist()
    assert len(rows[0]) == 8  # 64 dimensions, one bit each


def test_the_cli_offers_the_core_precisions() -> None:
    assert PRECISION_CHOICES == PRECISIONS


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--calibration", "r.npy"], "--calibration applies to --precision int8 and uint8"),
        (["--precision", "binary", "--calibration", "r.npy"], "--calibration applies to --precision int8 and uint8"),
        (["--precision", "int4"], "argument --precision: invalid choice: 'int4'"),
    ],
)
def test_precision_usage_errors(capsys: pytest.CaptureFixture[str], tiny_dir: Path, files: tuple[Path, Path],
                                tmp_path: Path, argv: list[str], message: str) -> None:  # fmt: skip
    code, _, err = run(capsys, "embed", files[0], "-o", tmp_path / "c.npy", "--kind", "corpus", *argv,
                       "--model", tiny_dir, *CPU)  # fmt: skip
    assert code == 1
    assert message in err


def test_a_calibration_file_that_is_not_one(capsys: pytest.CaptureFixture[str], tiny_dir: Path,
                                            files: tuple[Path, Path], tmp_path: Path) -> None:  # fmt: skip
    bad = tmp_path / "bad.npy"
    bad.write_text("not numpy")
    code, _, err = run(capsys, "embed", files[0], "-o", tmp_path / "c.npy", "--kind", "corpus", "--precision",
                       "int8", "--calibration", bad, "--model", tiny_dir, *CPU)  # fmt: skip
    assert code == 1
    assert f"{bad}: not a calibration .npy file" in err
    np.save(bad, np.zeros((2, 3), dtype=np.float32))
    code, _, err = run(capsys, "embed", files[0], "-o", tmp_path / "c.npy", "--kind", "corpus", "--precision",
                       "int8", "--calibration", bad, "--model", tiny_dir, *CPU)  # fmt: skip
    assert code == 1
    assert "calibration must have shape (2, 64)" in err
