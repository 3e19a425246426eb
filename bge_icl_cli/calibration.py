"""``bge-icl embed --precision`` / ``--calibration``: every check before the model loads, the file exactly as named.

A calibration file is the ``(2, dimension)`` float array of :func:`bge_icl.precision.calibration_ranges`, saved as
``.npy`` content under exactly the path given (``np.save`` on a path would add ``.npy`` to ``ranges.cal``, so the
query run would find nothing and calibrate on the queries). An existing file is read and checked before the model
loads (its width against the model's dimension once the model is there, before anything is embedded); a missing one
is written from the run's float32 vectors.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bge_icl.kinds import Kind
from bge_icl_cli.errors import CliError

if TYPE_CHECKING:
    import numpy as np

CALIBRATED = ("int8", "uint8")


@dataclass(frozen=True)
class CalibrationPlan:
    """What ``--precision`` / ``--calibration`` ask of one run.

    Attributes:
        precision: The output precision.
        path: The calibration file (None: none given).
        ranges: The ranges read from ``path`` (None: none given, or ``path`` is to be written from this run).
    """

    precision: str
    path: Path | None = None
    ranges: Any = None


def read_ranges(path: Path) -> np.ndarray:
    """The ranges in calibration file ``path``: a float (2, D) array, finite, min <= max in every dimension.

    Raises:
        CliError: The file cannot be read or is not such an array; the message names the file and the problem.
    """
    import numpy as np

    try:
        with path.open("rb") as f:
            ranges = np.load(f, allow_pickle=False)
    except OSError as e:
        raise CliError(f"cannot read --calibration {path}: {e.strerror or e}") from e
    except (ValueError, EOFError) as e:
        raise CliError(f"{path}: not a calibration .npy file ({e})") from e
    if not isinstance(ranges, np.ndarray) or ranges.dtype.kind != "f" or ranges.ndim != 2 or ranges.shape[0] != 2:
        got = f"{ranges.dtype} {ranges.shape}" if isinstance(ranges, np.ndarray) else type(ranges).__name__
        msg = f"{path}: a calibration is a float array of shape (2, dimension) (per-dimension min and max); got {got}"
        raise CliError(msg)
    from bge_icl.errors import OptionValueError
    from bge_icl.precision import check_ranges

    try:
        return check_ranges(ranges)
    except OptionValueError as e:
        raise CliError(f"{path}: {e}") from e


def plan_calibration(precision: str, calibration: str | None, rows: int, kind: Kind) -> CalibrationPlan:
    """Check ``--precision`` / ``--calibration`` for ``rows`` texts of ``kind``, before the model loads.

    Raises:
        CliError: ``--calibration`` with a precision that takes none, a directory, a folder that does not exist, an
            unreadable or malformed file, int8/uint8 of one text without a file to read, or sentence-transformers
            missing for a precision other than float32.
    """
    if calibration is not None and precision not in CALIBRATED:
        raise CliError("--calibration applies to --precision int8 and uint8")
    if precision == "float32":
        return CalibrationPlan(precision)
    from bge_icl.precision import require_quantizer

    try:
        require_quantizer()
    except ImportError as e:
        raise CliError(str(e)) from e
    if precision not in CALIBRATED:
        return CalibrationPlan(precision)
    if calibration is None:
        if rows < 2:
            msg = (
                f"--precision {precision} of a single text needs --calibration FILE: the ranges a corpus run wrote "
                f"(bge-icl embed CORPUS --precision {precision} --calibration FILE)"
            )
            raise CliError(msg)
        if kind == "queries":
            print(f"bge-icl: warning: {precision} codes calibrated on these queries alone are not comparable with a "
                  "corpus calibrated apart; pass the corpus run's --calibration FILE", file=sys.stderr)  # fmt: skip
        return CalibrationPlan(precision)
    path = Path(calibration)
    if path.is_dir():
        raise CliError(f"--calibration {calibration} is a directory; give a file path, e.g. {path / 'ranges.npy'}")
    if path.exists():
        return CalibrationPlan(precision, path, read_ranges(path))
    if not path.parent.is_dir():
        raise CliError(f"--calibration {calibration}: folder {path.parent} does not exist")
    if rows < 2:
        raise CliError(f"--calibration {path} does not exist, and one vector cannot calibrate {precision}")
    return CalibrationPlan(precision, path)


def check_width(plan: CalibrationPlan, dimension: int) -> None:
    """Once the model is loaded, before anything is embedded: the ranges fit its vectors."""
    if plan.ranges is not None and plan.ranges.shape[1] != dimension:
        msg = (
            f"{plan.path}: the calibration must have shape (2, {dimension}) for this model's {dimension}-dimensional "
            f"vectors; got {plan.ranges.shape}"
        )
        raise CliError(msg)


def quantize_run(plan: CalibrationPlan, vectors: np.ndarray) -> np.ndarray:
    """This run's float32 ``vectors`` in ``plan.precision``; a calibration file that does not exist yet is written
    (exactly at ``plan.path``) from them first."""
    if plan.precision == "float32":
        return vectors
    import numpy as np

    from bge_icl.precision import calibration_ranges, quantize

    ranges = plan.ranges
    if plan.path is not None and ranges is None:
        ranges = calibration_ranges(vectors)
        try:
            with plan.path.open("wb") as f:  # a file object: np.save(path) would append ".npy" to the name
                np.save(f, ranges)
        except OSError as e:
            raise CliError(f"cannot write --calibration {plan.path}: {e.strerror or e}") from e
        print(f"bge-icl: wrote the {plan.precision} calibration (per-dimension min and max) to {plan.path}",
              file=sys.stderr)  # fmt: skip
    return quantize(vectors, plan.precision, ranges)  # type: ignore[arg-type]
