"""Truncation reporting: what happens when texts are longer than their token limit."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal, cast

from bge_icl.choices import check_choice
from bge_icl.errors import FieldsPickle

OnTruncation = Literal["warn", "error", "ignore"]
ON_TRUNCATION: tuple[OnTruncation, ...] = ("warn", "error", "ignore")


class Truncation(FieldsPickle):
    """What was cut in one call: the fields of :class:`TruncationWarning` and :class:`TruncationError`.

    Attributes:
        count: How many texts were cut.
        total: How many texts the call had.
        kind: ``"queries"`` or ``"passages"``.
        option: The limit's option name (``"query_max_length"``, ``"passage_max_length"``, or ``"max_length"``
            when the call passed its own).
        limit: The limit, in tokens.
        indices: 0-based positions of the texts that were cut, in the call's order.
    """

    count: int
    total: int
    kind: str
    option: str
    limit: int
    indices: tuple[int, ...]

    def _set_fields(self, indices: Sequence[int], total: int, kind: str, option: str, limit: int) -> None:
        self.indices, self.count, self.total = tuple(indices), len(indices), total
        self.kind, self.option, self.limit = kind, option, limit


class TruncationWarning(Truncation, UserWarning):
    """Some texts were longer than ``query_max_length`` / ``passage_max_length`` and were cut."""

    def __init__(self, message: str, *, indices: Sequence[int], total: int, kind: str, option: str,
                 limit: int) -> None:  # fmt: skip
        super().__init__(message)
        self._set_fields(indices, total, kind, option, limit)


class TruncationError(Truncation, ValueError):
    """Raised instead of :class:`TruncationWarning` when ``on_truncation="error"``."""

    def __init__(self, message: str, *, indices: Sequence[int], total: int, kind: str, option: str,
                 limit: int) -> None:  # fmt: skip
        super().__init__(message)
        self._set_fields(indices, total, kind, option, limit)


def check_mode(mode: Any) -> OnTruncation:
    """``mode`` when it is one of :data:`ON_TRUNCATION`.

    Raises:
        ValueError: Another value; the message lists the valid ones.
    """
    return cast(OnTruncation, check_choice("on_truncation", mode, ON_TRUNCATION))


def report_truncation(
    truncated: Sequence[int], n: int, kind: str, limit: tuple[str, int], mode: OnTruncation, stacklevel: int = 2
) -> None:
    """Warn (once for the whole call), raise, or stay quiet about the ``truncated`` items of ``n`` ``kind``.

    Args:
        truncated: Indices of the texts that were cut.
        n: How many texts the call had.
        kind: ``"queries"`` or ``"passages"``, for the message.
        limit: The limit's option name and value, e.g. ``("passage_max_length", 512)``.
        mode: ``"warn"``, ``"error"`` or ``"ignore"``.
        stacklevel: Passed to :func:`warnings.warn` (counted from the caller of this function).

    Raises:
        TruncationError: Something was cut and ``mode="error"``.
    """
    if not truncated or mode == "ignore":
        return
    msg = (
        f"{len(truncated)} of {n} {kind} exceeded {limit[0]}={limit[1]} tokens and were truncated "
        f"(first: item {truncated[0]})"
    )
    if mode == "error":
        hint = "; shorten or split them, raise the limit, or pass on_truncation='warn'"
        raise TruncationError(msg + hint, indices=truncated, total=n, kind=kind, option=limit[0], limit=limit[1])
    report = TruncationWarning(msg, indices=truncated, total=n, kind=kind, option=limit[0], limit=limit[1])
    warnings.warn(report, stacklevel=stacklevel + 1)
