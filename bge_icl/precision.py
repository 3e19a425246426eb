"""Compact output precisions: int8, uint8, binary and ubinary vectors, through sentence-transformers.

``encode_queries`` / ``encode_corpus`` / ``encode_query`` / ``encode_document`` take ``precision=`` and hand
the float32 vectors to ``sentence_transformers``' ``quantize_embeddings``, so a vector store that already holds
sentence-transformers' quantized vectors gets the same bytes. sentence-transformers is imported only when a
precision other than ``"float32"`` is asked for (extra ``bge-icl[sentence-transformers]``).

Calibration (``int8`` / ``uint8``): each dimension's ``[min, max]`` range is cut into 256 equal buckets.
The ranges are a ``(2, dimension)`` array: pass ``calibration=`` (computed once by :func:`calibration_ranges`
from a representative sample of float32 vectors, e.g. a few thousand passages) so every call, queries and
passages alike, uses the same buckets. Without it the ranges come from the call's own vectors, as
sentence-transformers does (computed here and handed to it, so its "Computing int8 quantization buckets" log line
stays quiet), which makes vectors of different calls incomparable; a call of one text then refuses. Ranges must be
finite with min <= max in every dimension. ``binary`` / ``ubinary`` need no calibration: one bit per dimension
(``> 0``), packed 8 to a byte. An empty call returns the precision's dtype and width, ``(0, D)`` or
``(0, ceil(D / 8))``, so it can be appended to an index of that precision.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from bge_icl.choices import PRECISIONS, Precision, check_precision
from bge_icl.errors import OptionValueError
from bge_icl.optional import optional_import

__all__ = ["PRECISIONS", "Precision", "apply_precision", "calibration_ranges", "check_precision", "quantize"]
EXTRA = "sentence-transformers"


def calibration_ranges(vectors: np.ndarray) -> np.ndarray:
    """The int8/uint8 calibration of ``vectors`` (float32, shape (N, D), N >= 2): per-dimension min and max.

    Returns:
        float32 array, shape (2, D), to pass as ``calibration=`` (and to save beside an int8 index).

    Raises:
        ValueError: Not a float (N >= 2, D) array (int8 codes, say), or a vector holds nan or inf.
    """
    given = np.asarray(vectors)
    if given.dtype.kind not in "f":
        msg = (
            f"calibration_ranges takes float vectors (precision 'float32'), got {given.dtype}: ranges of "
            f"{given.dtype} codes would not bucket float vectors; pass the vectors before quantization"
        )
        raise ValueError(msg)
    v = given.astype(np.float32, copy=False)
    if v.ndim != 2 or v.shape[0] < 2:
        msg = f"calibration needs float vectors of shape (N >= 2, dimension); got shape {v.shape}"
        raise ValueError(msg)
    bad_rows = np.flatnonzero(~np.isfinite(v).all(axis=1))
    if bad_rows.size:
        msg = f"calibration_ranges takes finite vectors; row(s) {_dims(bad_rows)} hold nan or inf"
        raise ValueError(msg)
    return np.vstack((v.min(axis=0), v.max(axis=0)))  # (2, D)


def _quantize_embeddings() -> Any:
    try:  # sentence-transformers 6.x
        return importlib.import_module("sentence_transformers.util.quantization").quantize_embeddings
    except ImportError:  # 5.x, else the error that names the extra
        needed_by = "precision other than 'float32' (sentence-transformers' quantize_embeddings)"
        return optional_import("sentence_transformers.quantization", EXTRA, needed_by).quantize_embeddings


def require_quantizer() -> None:
    """Raise ImportError (naming the extra) unless sentence-transformers' ``quantize_embeddings`` can be imported:
    for callers that check before any work (the command line, before the model loads)."""
    _quantize_embeddings()


def check_calibration(
    precision: Precision, calibration: np.ndarray | None, dimension: int, rows: int
) -> np.ndarray | None:
    """Validate ``calibration`` for ``rows`` vectors of ``dimension`` before any work; float32 ranges or None."""
    if calibration is None:
        if precision.endswith("int8") and rows == 1:
            msg = (
                f"precision={precision!r} of a single text needs calibration=: ranges from calibration_ranges() "
                "over a sample of float32 vectors (the passages, say)"
            )
            raise OptionValueError(msg, option="calibration", value=None)
        return None
    if not precision.endswith("int8"):
        msg = f"calibration= applies to precision 'int8' and 'uint8', not {precision!r}"
        raise OptionValueError(msg, option="calibration", value=None)
    ranges = np.asarray(calibration, dtype=np.float32)
    if ranges.shape != (2, dimension):
        msg = (
            f"calibration must have shape (2, {dimension}) (per-dimension min and max, see "
            f"calibration_ranges); got {ranges.shape}"
        )
        raise OptionValueError(msg, option="calibration", value=None)
    return check_ranges(ranges)


def check_ranges(calibration: object) -> np.ndarray:
    """``calibration`` as float32 ranges of shape (2, D), finite, min <= max in every dimension: the one check of a
    calibration's content (:func:`check_calibration` adds the precision and the model's width; the command line
    runs it on a file before the model loads).

    Raises:
        OptionValueError: Not of shape (2, D), nan or inf, or min > max (``.option == "calibration"``).
    """
    ranges = np.asarray(calibration, dtype=np.float32)
    if ranges.ndim != 2 or ranges.shape[0] != 2:
        msg = f"calibration must have shape (2, dimension) (per-dimension min and max); got {ranges.shape}"
        raise OptionValueError(msg, option="calibration", value=None)
    not_finite = np.flatnonzero(~np.isfinite(ranges).all(axis=0))
    if not_finite.size:
        msg = (
            f"calibration must be finite; dimension(s) {_dims(not_finite)} hold nan or inf (recompute it with "
            "calibration_ranges)"
        )
        raise OptionValueError(msg, option="calibration", value=None)
    reversed_ = np.flatnonzero(ranges[0] > ranges[1])
    if reversed_.size:
        msg = (
            f"calibration has min > max in dimension(s) {_dims(reversed_)} (row 0 holds the minimum, row 1 the "
            "maximum)"
        )
        raise OptionValueError(msg, option="calibration", value=None)
    return ranges


def _dims(indices: np.ndarray, limit: int = 3) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:limit])
    return f"[{shown}{', ...' if len(indices) > limit else ''}]"


def quantize(vectors: np.ndarray, precision: Precision, calibration: np.ndarray | None = None) -> np.ndarray:
    """``vectors`` (float32, (N, D)) in ``precision``.

    Args:
        vectors: float32 embeddings, shape (N, D).
        precision: One of :data:`PRECISIONS`.
        calibration: int8/uint8 only: ranges of shape (2, D) from :func:`calibration_ranges`.

    Returns:
        float32 (N, D); int8 / uint8 (N, D); binary (int8) / ubinary (uint8) (N, ceil(D / 8)); N = 0 included.

    Raises:
        ValueError: An unknown precision, a calibration of the wrong shape, not finite or with min > max, or
            int8/uint8 asked of one text without a calibration.
        ImportError: sentence-transformers is not installed (any precision but float32).

    Example:
        >>> quantize(np.array([[0.5, -0.1, 0.2, 0.0]] * 2, dtype=np.float32), "ubinary")  # doctest: +SKIP
        array([[160], [160]], dtype=uint8)
    """
    rows, dimension = vectors.shape
    return apply_precision(vectors, precision, check_calibration(check_precision(precision), calibration, dimension,
                                                                 rows))  # fmt: skip


def apply_precision(vectors: np.ndarray, precision: Precision, ranges: np.ndarray | None) -> np.ndarray:
    """:func:`quantize` with arguments already checked (:func:`check_precision`, :func:`check_calibration`)."""
    rows, dimension = vectors.shape
    if precision == "float32":
        return vectors
    quantize_embeddings = _quantize_embeddings()  # the extra is needed for an empty call too, as for any other
    if rows == 0:  # nothing to bucket: the precision's dtype and width, so that it concatenates with its index
        width = dimension if precision.endswith("int8") else (dimension + 7) // 8
        return np.empty((0, width), dtype=np.int8 if precision in ("int8", "binary") else np.uint8)
    if precision.endswith("int8") and ranges is None:
        ranges = calibration_ranges(vectors)  # the call's own ranges, as sentence-transformers computes them
    out: np.ndarray = quantize_embeddings(vectors, precision=precision, ranges=ranges)
    return out
