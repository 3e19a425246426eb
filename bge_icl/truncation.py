"""Truncation reporting: what happens when texts are longer than their token limit."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal, cast

OnTruncation = Literal["warn", "error", "ignore"]
ON_TRUNCATION: tuple[OnTruncation, ...] = ("warn", "error", "ignore")


class TruncationWarning(UserWarning):
    """Some texts were longer than ``query_max_length`` / ``passage_max_length`` and were cut."""


class TruncationError(ValueError):
    """Raised instead of :class:`TruncationWarning` when ``on_truncation="error"``."""


def check_mode(mode: Any) -> OnTruncation:
    """``mode`` when it is one of :data:`ON_TRUNCATION`.

    Raises:
        ValueError: Another value; the message lists the valid ones.
    """
    if mode not in ON_TRUNCATION:
        msg = f"on_truncation={mode!r} is not supported; valid: {ON_TRUNCATION}"
        raise ValueError(msg)
    return cast(OnTruncation, mode)


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
        raise TruncationError(msg + "; shorten or split them, raise the limit, or pass on_truncation='warn'")
    warnings.warn(msg, TruncationWarning, stacklevel=stacklevel + 1)
