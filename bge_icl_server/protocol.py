"""The ``/v1/embeddings`` dialect: OpenAI's request and response, plus NVIDIA NIM's ``input_type`` and ``truncate``.

:class:`EmbeddingRequest` declares the request (types, defaults, docs: also the OpenAPI page's schema);
:func:`invalid` turns pydantic's first error into OpenAI's error, its ``loc`` into the error's ``param``
(``("input", 3)`` -> ``"input[3]"``); :func:`response_body` builds the answer.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
    field_validator,
)

from bge_icl.errors import OptionError
from bge_icl.kinds import SPELLINGS, Kind, kind_of
from bge_icl.truncation import OnTruncation
from bge_icl_server.errors import ApiError, item

TRUNCATE: dict[str, OnTruncation] = {"END": "ignore", "NONE": "error"}
JSON_TYPES = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string",
              dict: "an object", list: "an array"}  # fmt: skip
TOKEN_IDS = (" (token-id arrays are not supported: send text; langchain-openai's OpenAIEmbeddings sends them unless "
             "check_embedding_ctx_length=False)")  # fmt: skip
# What to send instead, by field: the end of a message about a value of the wrong type (model: the served ids).
HINTS = {"model": "served model ids: {ids}", "input": "send a string or a list of strings",
         "dimensions": "send a positive integer", "input_type": "send a string", "user": "send a string"}  # fmt: skip
Text = Annotated[StrictStr, StringConstraints(min_length=1)]


class EmbeddingRequest(BaseModel):
    """A ``/v1/embeddings`` request body; other fields (``user``, ...) are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    model: Text
    """A served model id (``GET /v1/models``); ``ID:query`` embeds every input as a query of ``ID``."""
    input: Annotated[list[Text], Field(min_length=1)]
    """A string or a list of strings (no token-id arrays)."""
    encoding_format: Literal["float", "base64"] = "float"
    """``"base64"``: little-endian float32, as the ``openai`` client reads it."""
    dimensions: StrictInt | None = None
    """Keep the first ``dimensions`` of each vector (cut before normalizing); below the model's dimension only when
    the server allows it (``--allow-dimensions``)."""
    input_type: StrictStr | None = None
    """NIM's ``"query"`` or ``"passage"`` (``"document"`` means passage); default: the model id's role (passage)."""
    truncate: Literal["END", "NONE"] = "END"
    """NIM's ``"END"`` (cut a too-long input at its limit) or ``"NONE"`` (a too-long input is a 400 naming it)."""

    @field_validator("input", mode="before")
    @classmethod
    def _one_string(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("input_type")
    @classmethod
    def _kind(cls, value: str | None) -> str | None:
        if value is not None:
            kind_of(value)  # an OptionValueError: invalid() words it from its fields
        return value

    @field_validator("truncate", mode="before")
    @classmethod
    def _not_start(cls, value: Any) -> Any:
        if value == "START":
            msg = ("truncate='START' is not supported: a too-long input is cut at its end, as the model embeds the "
                   "start of a text; send 'END' (the default) or 'NONE' (a too-long input is an error)")  # fmt: skip
            raise ValueError(msg)
        return value

    @property
    def kind(self) -> Kind | None:
        """What ``input_type`` asks for (None: not given)."""
        return None if self.input_type is None else kind_of(self.input_type)

    @property
    def on_truncation(self) -> OnTruncation:
        """The core's mode for ``truncate``."""
        return TRUNCATE[self.truncate]


def json_type(value: Any) -> str:
    """How a JSON value's type reads in a message: ``"a number"``, ``"an array"``, ..."""
    return JSON_TYPES.get(type(value), type(value).__name__)


def parse(raw: bytes) -> EmbeddingRequest:
    """The request of a body.

    Raises:
        ApiError: 400 when the body is not JSON (nested too deeply, too).
        pydantic.ValidationError: A field is missing or wrong (see :func:`invalid`).
    """
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        example = '{"model": ..., "input": ...}'
        msg = f"the request body is not valid JSON ({reason}); send a JSON object such as {example}"
        raise ApiError(400, msg) from None
    return EmbeddingRequest.model_validate(body)


def invalid(error: ValidationError, model_ids: tuple[str, ...]) -> ApiError:
    """The 400 for the first problem pydantic found; ``param`` is its ``loc`` (``input[3]`` for one input).

    Args:
        error: From :class:`EmbeddingRequest`'s validation.
        model_ids: The served ids, listed when ``model`` is missing or not a string.
    """
    first = error.errors(include_url=False)[0]
    loc, kind, value = first["loc"], first["type"], first.get("input")
    if not loc:
        return ApiError(400, f"the request body is {json_type(value)}; send a JSON object with 'model' and 'input'")
    param = item(int(loc[1])) if len(loc) > 1 else str(loc[0])
    hint = HINTS.get(str(loc[0]), "").format(ids=", ".join(model_ids))
    if kind == "missing":
        message = f"{param} is missing; {hint}"
    elif kind == "literal_error":
        message = f"{param}={json.dumps(value)[:80]} is not supported; valid: {first['ctx']['expected']}"
    elif kind == "value_error":
        cause = first["ctx"]["error"]
        valid = ", ".join(repr(s) for s in SPELLINGS)
        message = f"{param}={json.dumps(cause.value)[:80]} is not supported; valid: {valid}" if isinstance(
            cause, OptionError) else str(cause)
    elif kind == "too_short":
        message = f"{param} is an empty list; send at least one string"
    elif kind == "string_too_short":
        message = f"{param} is an empty string; " + ("each input must hold text" if len(loc) > 1 else hint)
    elif kind == "string_unicode":
        message = f"{param} is not valid Unicode (a lone surrogate); send UTF-8 text"
    elif len(loc) > 1:  # one input of the wrong type
        token_ids = isinstance(value, list) or (isinstance(value, int) and not isinstance(value, bool))
        message = f"{param} is {json_type(value)}; each input must be a string{TOKEN_IDS if token_ids else ''}"
    else:
        message = f"{param} is {json_type(value)}; {hint}"
    return ApiError(400, message, param=param)


def response_body(model_id: str, encoding: str, vectors: np.ndarray, tokens: int) -> bytes:
    """OpenAI's ``{"object": "list", "data": [...], "model", "usage"}`` as JSON bytes.

    Built one row at a time, so that on a worker thread it lets the event loop run between rows: one ``json.dumps``
    of all rows holds the GIL throughout (seconds for 2,048 rows of 4,096 floats).

    Args:
        model_id: The model id the request named.
        encoding: ``"float"`` or ``"base64"``.
        vectors: (N, d) float32, in input order.
        tokens: Tokens the model embedded for the request (special tokens and a query's examples included).
    """
    if encoding == "base64":
        rows: Iterator[Any] = (base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors)
    else:
        rows = (v.tolist() for v in vectors)
    data = ", ".join(json.dumps({"object": "embedding", "index": i, "embedding": row}) for i, row in enumerate(rows))
    usage = json.dumps({"prompt_tokens": tokens, "total_tokens": tokens})
    # What json.dumps writes for {"object": "list", "data": [...], "model": ..., "usage": {...}}.
    return f'{{"object": "list", "data": [{data}], "model": {json.dumps(model_id)}, "usage": {usage}}}'.encode()
