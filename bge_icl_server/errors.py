"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``, all four keys always present.

The server formats its own words from the fields of the core's errors (``InputError.index``,
``TruncationError.indices`` / ``.limit`` / ``.option``); it never parses a core message. An error about one input
names its 0-based position in ``param`` (``"input[3]"``) and in the message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from bge_icl.errors import InputError
from bge_icl.truncation import TruncationError

INVALID = "invalid_request_error"
SERVER = "server_error"


class ApiError(Exception):
    """An HTTP error answered with OpenAI's error body.

    Attributes:
        status: The HTTP status code.
        message: What went wrong and how to fix it (never a text of the request).
        type: OpenAI's error type: ``"invalid_request_error"`` (the request's fault) or ``"server_error"``.
        param: The request field at fault (``"input[3]"``, ``"dimensions"``), or None.
        code: A stable, machine-readable code (``"model_not_found"``, ``"invalid_api_key"``), or None.
        headers: Extra response headers (``Retry-After``, ``WWW-Authenticate``).
    """

    def __init__(self, status: int, message: str, *, type: str = INVALID, param: str | None = None,
                 code: str | None = None, headers: Mapping[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def content(self) -> bytes:
        """:meth:`body` as JSON bytes."""
        return json.dumps(self.body()).encode()


def item(index: int) -> str:
    """The ``param`` of one input: ``input[3]``."""
    return f"input[{index}]"


def _named(indices: Sequence[int], shown: int = 5) -> str:
    names = ", ".join(item(i) for i in indices[:shown])
    return names + (f" and {len(indices) - shown} more" if len(indices) > shown else "")


def from_core(error: Exception, kind: str) -> ApiError:
    """The 400 for an error of the core about the request's texts; ``kind`` is ``"queries"`` or ``"passages"``.

    Args:
        error: An :class:`~bge_icl.errors.InputError` or :class:`~bge_icl.truncation.TruncationError`.
        kind: What the texts were embedded as.
    """
    if isinstance(error, TruncationError):
        indices = list(error.indices)
        what = "is" if len(indices) == 1 else "are"
        unit = "query" if kind == "queries" else "passage"
        counted = " (few-shot examples not counted)" if kind == "queries" else ""
        message = (
            f"{_named(indices)} {what} longer than the server's {unit} limit of {error.limit} tokens{counted} "
            f"({error.option}), and truncate is 'NONE'; shorten {'it' if len(indices) == 1 else 'them'}, "
            "or send truncate='END' to cut at the limit"
        )
        return ApiError(400, message, param=item(indices[0]), code="context_length_exceeded")
    if isinstance(error, InputError) and error.index is not None:
        reason = "is not valid Unicode (a lone surrogate)" if isinstance(error, ValueError) else "is not a string"
        return ApiError(400, f"{item(error.index)} {reason}; send UTF-8 text", param=item(error.index))
    return ApiError(400, "input must be a string or a list of strings", param="input")
