"""Output precisions: ``precision=`` equals sentence-transformers' ``quantize_embeddings`` and a brute-force
quantization of the float32 vectors; calibration makes separate calls comparable; clear errors."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch

from bge_icl import ICLEmbedder
from bge_icl.precision import PRECISIONS, calibration_ranges, quantize
from tests.bge_icl.cases import PASSAGES


def _brute_force(v: np.ndarray, precision: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """From the definitions: 256 equal buckets per dimension over [min, max]; one bit per dimension (> 0)."""
    if precision == "float32":
        return v
    if precision.endswith("binary"):
        bits = (v > 0).astype(np.int64).reshape(v.shape[0], -1, 8)  # (N, D / 8, 8); D is a multiple of 8 here
        packed = bits @ (2 ** np.arange(7, -1, -1))  # (N, D / 8): the first dimension is the highest bit
        return packed.astype(np.uint8) if precision == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)
    lo, hi = (v.min(0), v.max(0)) if ranges is None else (ranges[0], ranges[1])
    step = np.where(hi - lo == 0, 1, (hi - lo) / 255)
    buckets = np.clip(np.floor((v - lo) / step), 0, 255)
    return buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_each_precision_equals_sentence_transformers_and_brute_force(emb: ICLEmbedder, precision: str) -> None:
    st_quantization = pytest.importorskip("sentence_transformers.quantization")
    floats = emb.encode_corpus(PASSAGES)  # (N, 64)
    out = emb.encode_corpus(PASSAGES, precision=precision)
    expected = st_quantization.quantize_embeddings(floats, precision=precision)
    assert out.dtype == expected.dtype and out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out, _brute_force(floats, precision))
    per_vector = {"float32": 4 * 64, "int8": 64, "uint8": 64, "binary": 64 // 8, "ubinary": 64 // 8}
    assert out.nbytes == len(PASSAGES) * per_vector[precision]


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_a_calibration_makes_calls_comparable(emb: ICLEmbedder, precision: str) -> None:
    pytest.importorskip("sentence_transformers")
    corpus = emb.encode_corpus(PASSAGES)
    ranges = calibration_ranges(corpus)  # (2, 64)
    assert ranges.shape == (2, 64)
    queries = ["how much protein should a female eat", "summit define"]
    batch = emb.encode_queries(queries, precision=precision, calibration=ranges)
    one = emb.encode_queries(queries[1], precision=precision, calibration=ranges)  # a single text, same buckets
    np.testing.assert_array_equal(one, batch[1])
    np.testing.assert_array_equal(batch, _brute_force(emb.encode_queries(queries), precision, ranges))
    # Without it the call calibrates on its own two vectors, so the same query gets other codes.
    assert not np.array_equal(emb.encode_queries(queries, precision=precision)[1], one)


def test_quantized_tensors_when_convert_to_numpy_is_false(emb: ICLEmbedder) -> None:
    pytest.importorskip("sentence_transformers")
    out = emb.encode_corpus(PASSAGES, convert_to_numpy=False, precision="ubinary")
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8 and out.shape == (len(PASSAGES), 8)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ({"precision": "fp16"}, r"precision='fp16' is not supported; valid: \('float32', 'int8', 'uint8', 'binary', "),
        ({"precision": "int8", "calibration": np.zeros((2, 3))},
         r"calibration must have shape \(2, 64\) \(per-dimension min and max, see calibration_ranges\); got \(2, 3\)"),
        ({"precision": "binary", "calibration": np.zeros((2, 64))},
         r"calibration= applies to precision 'int8' and 'uint8', not 'binary'"),
    ],
)
def test_bad_precision_arguments_fail_before_any_work(emb: ICLEmbedder, call: dict[str, Any], message: str) -> None:
    before = emb.stats.replica_rows
    with pytest.raises(ValueError, match=message):
        emb.encode_corpus(PASSAGES, **call)
    assert emb.stats.replica_rows == before  # nothing was embedded


def test_int8_of_one_text_needs_a_calibration(emb: ICLEmbedder) -> None:
    before = emb.stats.replica_rows
    with pytest.raises(ValueError, match=r"precision='int8' of a single text needs calibration=: ranges from "):
        emb.encode_queries("summit define", precision="int8")
    assert emb.stats.replica_rows == before


def test_calibration_needs_two_vectors() -> None:
    with pytest.raises(ValueError, match=r"shape \(N >= 2, dimension\); got shape \(1, 4\)"):
        calibration_ranges(np.zeros((1, 4), dtype=np.float32))


def test_without_sentence_transformers_float32_works_and_int8_names_the_extra(
    emb: ICLEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m.split(".")[0] == "sentence_transformers"] + ["sentence_transformers"]:
        monkeypatch.setitem(sys.modules, name, None)  # import sentence_transformers now raises ImportError
    assert emb.encode_corpus(PASSAGES, precision="float32").dtype == np.float32
    with pytest.raises(ImportError, match=r"install it with: pip install 'bge-icl\[sentence-transformers\]'"):
        emb.encode_corpus(PASSAGES, precision="binary")
    with pytest.raises(ImportError, match=r"bge-icl\[sentence-transformers\]"):
        quantize(np.ones((2, 8), dtype=np.float32), "int8")


def test_the_core_does_not_import_sentence_transformers_until_a_precision_asks() -> None:
    code = "import sys, bge_icl, bge_icl.encoder, bge_icl.precision; print('sentence_transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("precision", PRECISIONS)
def test_an_empty_call_has_the_precisions_dtype_and_width(emb: ICLEmbedder, precision: str) -> None:
    pytest.importorskip("sentence_transformers")
    full = emb.encode_corpus(PASSAGES, precision=precision)  # (N, 64) or (N, 8) in the precision's dtype
    empty = emb.encode_corpus([], precision=precision)
    assert (empty.dtype, empty.shape) == (full.dtype, (0, full.shape[1]))
    width = 64 if precision in ("float32", "int8", "uint8") else 8  # ceil(64 / 8) bytes of bits
    assert full.shape[1] == width
    joined = np.concatenate([full, empty])  # appending an empty call keeps the index's dtype
    assert joined.dtype == full.dtype
    np.testing.assert_array_equal(joined, full)
    if precision.endswith("int8"):
        ranges = calibration_ranges(emb.encode_corpus(PASSAGES))
        calibrated = emb.encode_corpus([], precision=precision, calibration=ranges)
        assert (calibrated.dtype, calibrated.shape) == (full.dtype, (0, 64))


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_an_uncalibrated_call_is_quiet(
    emb: ICLEmbedder, precision: str, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("sentence_transformers")
    with caplog.at_level("DEBUG"):
        out = emb.encode_corpus(PASSAGES, precision=precision, show_progress=False)
    np.testing.assert_array_equal(out, _brute_force(emb.encode_corpus(PASSAGES), precision))
    assert not [r for r in caplog.records if "quantization" in r.getMessage()], caplog.text
    assert "quantization buckets" not in capfd.readouterr().err


def test_calibration_ranges_refuse_codes() -> None:
    codes = np.array([[1, -3], [4, 2]], dtype=np.int8)
    message = "calibration_ranges takes float vectors (precision 'float32'), got int8: ranges of int8 codes"
    with pytest.raises(ValueError, match=re.escape(message)):
        calibration_ranges(codes)
    finite = "calibration_ranges takes finite vectors; row(s) [1] hold nan or inf"
    with pytest.raises(ValueError, match=re.escape(finite)):
        calibration_ranges(np.array([[0.1, 0.2], [np.nan, 0.3]], dtype=np.float32))


def _ranges(emb: ICLEmbedder) -> np.ndarray:
    return calibration_ranges(emb.encode_corpus(PASSAGES))


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda r: r.__setitem__((0, 5), np.nan),
         "calibration must be finite; dimension(s) [5] hold nan or inf (recompute it with calibration_ranges)"),
        (lambda r: r.__setitem__((1, 7), np.inf),
         "calibration must be finite; dimension(s) [7] hold nan or inf (recompute it with calibration_ranges)"),
        (lambda r: r.__setitem__(slice(None), r[::-1].copy()),
         "calibration has min > max in dimension(s) [0, 1, 2, ...] (row 0 holds the minimum, row 1 the maximum)"),
    ],
)  # fmt: skip
def test_calibration_that_is_not_finite_or_has_min_above_max_is_refused(
    emb: ICLEmbedder, spoil: Any, message: str
) -> None:
    ranges = _ranges(emb)
    spoil(ranges)
    before = emb.stats.replica_rows
    with pytest.raises(ValueError, match=re.escape(message)):
        emb.encode_corpus(PASSAGES, precision="int8", calibration=ranges)
    assert emb.stats.replica_rows == before  # refused before any work
