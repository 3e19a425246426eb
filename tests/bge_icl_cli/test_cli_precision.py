"""``bge-icl embed --precision`` / ``--calibration``: the CLI writes what ``bge_icl.precision`` computes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bge_icl import WEB_SEARCH_INSTRUCTION, ICLEmbedder
from bge_icl.precision import calibration_ranges, quantize
from bge_icl.quickstart import DOCUMENTS, EXAMPLES, QUERIES
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


# -- --calibration: exactly the path given, every check before the model loads -----------------------------------


@pytest.mark.parametrize("name", ["ranges.cal", "ranges", "ranges.npy"])
def test_the_calibration_file_is_exactly_the_path_given(
    capsys: pytest.CaptureFixture[str], tiny_dir: Path, files: tuple[Path, Path], tmp_path: Path, name: str
) -> None:
    corpus, queries = files
    ranges_path = tmp_path / name
    common = ["--precision", "int8", "--calibration", ranges_path, "--model", tiny_dir, *CPU, "-q"]
    code, _, err = run(capsys, "embed", corpus, "-o", tmp_path / "c.npy", "--kind", "corpus", *common)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ranges")) == [name]  # no ".npy" added
    assert f"to {ranges_path}\n" in err
    code, _, err = run(capsys, "embed", queries, "-o", tmp_path / "q.npy", "--kind", "query", *common)
    assert code == 0, err
    assert "calibration" not in err  # read, not written again
    emb = ICLEmbedder(str(tiny_dir), devices="cpu", query_instruction_for_retrieval=WEB_SEARCH_INSTRUCTION)
    ranges = calibration_ranges(emb.encode_corpus(corpus.read_text().splitlines()))
    np.testing.assert_allclose(np.load(ranges_path), ranges, atol=1e-6)
    np.testing.assert_array_equal(np.load(tmp_path / "q.npy"), quantize(emb.encode_queries(QUERIES), "int8", ranges))


def _spoiled(tmp_path: Path, spoil: str) -> Path:
    path = tmp_path / f"{spoil}.npy"
    ranges = np.vstack([np.full(64, -0.5), np.full(64, 0.5)]).astype(np.float32)
    if spoil == "nan":
        ranges[1, 3] = np.nan
    elif spoil == "reversed":
        ranges = ranges[::-1].copy()
    elif spoil == "one-row":
        ranges = ranges[:1]
    elif spoil == "codes":
        ranges = ranges.astype(np.int8)
    np.save(path, ranges)
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--precision", "binary", "--calibration", "r.npy"], "--calibration applies to --precision int8 and uint8"),
        (["--precision", "int8", "--calibration", "."], "--calibration . is a directory; give a file path"),
        (["--precision", "int8", "--calibration", "{tmp}/no/such/ranges.npy"],
         "--calibration {tmp}/no/such/ranges.npy: folder {tmp}/no/such does not exist"),
        (["--precision", "int8", "--calibration", "{bad}"], "{bad}: not a calibration .npy file"),
        (["--precision", "int8", "--calibration", "{nan}"],  # the core's one check of a calibration, file named
         "{nan}: calibration must be finite; dimension(s) [3] hold nan or inf (recompute it with calibration_ranges)"),
        (["--precision", "int8", "--calibration", "{reversed}"],
         "{reversed}: calibration has min > max in dimension(s) [0, 1, 2, ...] (row 0 holds the minimum, row 1 "
         "the maximum)"),
        (["--precision", "uint8", "--calibration", "{one-row}"],
         "{one-row}: a calibration is a float array of shape (2, dimension) (per-dimension min and max); got "
         "float32 (1, 64)"),
        (["--precision", "uint8", "--calibration", "{codes}"],
         "{codes}: a calibration is a float array of shape (2, dimension) (per-dimension min and max); got int8 "
         "(2, 64)"),
        (["-o", "{tmp}/missing/c.npy"], "output folder {tmp}/missing does not exist"),
        (["-o", "{tmp}/out.npy"], "output {tmp}/out.npy is a directory; give a file path ending in .npy or .jsonl"),
        (["-o", "{tmp}/c.csv"], "output {tmp}/c.csv must end in .npy (float32 matrix) or .jsonl"),
    ],
)  # fmt: skip
def test_argument_and_path_errors_come_before_the_model_loads(
    capsys: pytest.CaptureFixture[str], files: tuple[Path, Path], tmp_path: Path, argv: list[str], message: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out.npy").mkdir()
    (tmp_path / "bad.npy").write_text("not numpy")
    names = {"tmp": str(tmp_path), "bad": str(tmp_path / "bad.npy")}
    names.update((spoil, str(_spoiled(tmp_path, spoil))) for spoil in ("nan", "reversed", "one-row", "codes"))
    argv = [a.format(**names) for a in argv]
    output = [] if "-o" in argv else ["-o", str(tmp_path / "c.npy")]
    no_model = tmp_path / "no-model"  # a model that cannot load: exit 2 had the checks come after loading
    code, _, err = run(capsys, "embed", files[0], *output, "--kind", "corpus", *argv, "--model", no_model, *CPU)
    assert code == 1, err
    assert err.startswith(f"bge-icl: error: {message.format(**names)}") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c.npy").exists() and not (tmp_path / "r.npy").exists()


def test_one_text_in_int8_names_the_cli_option(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    one = tmp_path / "one.txt"
    one.write_text("summit define\n")
    code, _, err = run(capsys, "embed", one, "-o", tmp_path / "q.npy", "--kind", "query", "--precision", "int8",
                       "--model", tmp_path / "no-model", *CPU)  # fmt: skip
    assert code == 1
    assert err.startswith("bge-icl: error: --precision int8 of a single text needs --calibration FILE")
    assert "calibration_ranges" not in err and "calibration=" not in err


def test_an_uncalibrated_query_run_warns(capsys: pytest.CaptureFixture[str], tiny_dir: Path,
                                         files: tuple[Path, Path], tmp_path: Path) -> None:  # fmt: skip
    code, _, err = run(capsys, "embed", files[1], "-o", tmp_path / "q.npy", "--kind", "query", "--precision", "uint8",
                       "--model", tiny_dir, *CPU, "-q")  # fmt: skip
    assert code == 0, err
    assert ("bge-icl: warning: uint8 codes calibrated on these queries alone are not comparable with a corpus "
            "calibrated apart; pass the corpus run's --calibration FILE") in err  # fmt: skip
    assert "quantization buckets" not in err  # sentence-transformers' own log line stays quiet
    code, _, err = run(capsys, "embed", files[0], "-o", tmp_path / "c.npy", "--kind", "corpus", "--precision", "uint8",
                       "--model", tiny_dir, *CPU, "-q")  # fmt: skip
    assert code == 0 and "warning" not in err  # a corpus run calibrating on itself is the usual first step
