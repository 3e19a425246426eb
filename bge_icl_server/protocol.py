"""The ``/v1/embeddings`` dialect: OpenAI's request and response, plus NVIDIA NIM's ``input_type`` and ``truncate``.

Request fields (unknown ones, such as ``user``, are ignored):

- ``model``: a served model id (:attr:`~bge_icl_server.config.ServerConfig.model_ids`).
- ``input``: a string or a list of strings (no token-id arrays).
- ``encoding_format``: ``"float"`` (default) or ``"base64"`` (little-endian float32, as the ``openai`` client reads).
- ``dimensions``: keep the first ``d`` dimensions (re-normalized when the server normalizes), ``0 < d <= dimension``.
- ``input_type`` (NIM): ``"query"``, or ``"passage"`` (default; ``"document"`` means the same).
- ``truncate`` (NIM): ``"END"`` (default: cut at the limit, as the core does) or ``"NONE"`` (a too-long input is a
  400 naming it). ``"START"`` is refused: the model embeds the start of a text.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from bge_icl.encoder import Kind
from bge_icl.truncation import OnTruncation
from bge_icl_server.errors import ApiError, item

ENCODINGS = ("float", "base64")
INPUT_TYPES: dict[str, Kind] = {"query": "queries", "passage": "passages", "document": "passages"}
TRUNCATE: dict[str, OnTruncation] = {"END": "ignore", "NONE": "error"}
JSON_TYPES = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string",
              dict: "an object", list: "an array"}  # fmt: skip


@dataclass(frozen=True)
class EmbeddingRequest:
    """A checked ``/v1/embeddings`` request.

    Attributes:
        model: The model id asked for (not yet checked against the served ones).
        texts: The inputs, in order.
        kind: ``"queries"`` or ``"passages"`` (from ``input_type``).
        encoding: ``"float"`` or ``"base64"``.
        dimensions: Keep this many leading dimensions (None: all).
        on_truncation: The core's mode for ``truncate``: ``"ignore"`` (END) or ``"error"`` (NONE).
    """

    model: str
    texts: list[str]
    kind: Kind
    encoding: Literal["float", "base64"]
    dimensions: int | None
    on_truncation: OnTruncation


def _json_type(value: Any) -> str:
    return JSON_TYPES.get(type(value), type(value).__name__)


def _choice(body: dict[str, Any], name: str, valid: Any, default: str) -> str:
    value = body.get(name)
    if value is None:
        return default
    if value not in valid:
        msg = f"{name}={json.dumps(value)[:80]} is not supported; valid: {', '.join(repr(v) for v in valid)}"
        if name == "truncate" and value == "START":
            msg = (
                "truncate='START' is not supported: a too-long input is cut at its end, as the model embeds "
                "the start of a text; send 'END' (the default) or 'NONE' (a too-long input is an error)"
            )
        raise ApiError(400, msg, param=name)
    return str(value)


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body.

    Raises:
        ApiError: 400 when the body is not JSON, or not an object.
    """
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        msg = f"the request body is not valid JSON ({e}); send a JSON object such as {{\"model\": ..., \"input\": ...}}"
        raise ApiError(400, msg) from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body is {_json_type(body)}; send a JSON object with 'model' and 'input'")
    return body


def parse_request(body: dict[str, Any], max_inputs: int, model_ids: tuple[str, ...]) -> EmbeddingRequest:
    """Check an embeddings request body; the first problem found is raised.

    Args:
        body: The parsed JSON object.
        max_inputs: Most texts per request (more: 413).
        model_ids: The served ids, listed in the message when ``model`` is missing.

    Raises:
        ApiError: 400 for a bad field (``param`` names it, ``input[i]`` for one input), 413 for too many inputs.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        got = "missing" if model is None else f"{_json_type(model)}, not a model id"
        raise ApiError(400, f"model is {got}; served model ids: {', '.join(model_ids)}", param="model")
    texts = body.get("input")
    if texts is None:
        raise ApiError(400, "input is missing; send a string or a list of strings", param="input")
    if isinstance(texts, str):
        texts = [texts]
    elif not isinstance(texts, list):
        raise ApiError(400, f"input is {_json_type(texts)}; send a string or a list of strings", param="input")
    if not texts:
        raise ApiError(400, "input is an empty list; send at least one string", param="input")
    if len(texts) > max_inputs:
        msg = f"input has {len(texts)} items; this server takes at most {max_inputs} per request (split the request)"
        raise ApiError(413, msg, param="input", code="too_many_inputs")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            token_ids = isinstance(text, list) or (isinstance(text, int) and not isinstance(text, bool))
            hint = " (token-id arrays are not supported: send text)" if token_ids else ""
            raise ApiError(400, f"{item(i)} is {_json_type(text)}; each input must be a string{hint}", param=item(i))
        if not text:
            raise ApiError(400, f"{item(i)} is an empty string; each input must hold text", param=item(i))
    encoding = _choice(body, "encoding_format", ENCODINGS, "float")
    kind = INPUT_TYPES[_choice(body, "input_type", tuple(INPUT_TYPES), "passage")]
    on_truncation = TRUNCATE[_choice(body, "truncate", tuple(TRUNCATE), "END")]
    dimensions = body.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool)):
        raise ApiError(400, f"dimensions is {_json_type(dimensions)}; send a positive integer", param="dimensions")
    return EmbeddingRequest(model, texts, kind, encoding, dimensions, on_truncation)  # type: ignore[arg-type]


def check_dimensions(dimensions: int | None, dimension: int) -> None:
    """Raises a 400 (``param="dimensions"``) unless ``0 < dimensions <= dimension`` (or ``dimensions`` is None)."""
    if dimensions is not None and not 0 < dimensions <= dimension:
        msg = f"dimensions={dimensions} is out of range; this model's vectors have 1 to {dimension} dimensions"
        raise ApiError(400, msg, param="dimensions")


def cut(vectors: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:  # (N, D) -> (N, d)
    """The first ``dimensions`` of each vector, L2-normalized again when the server normalizes.

    The core's ``truncate_dim`` cuts before normalizing; a cut unit vector re-normalized is the same vector.
    """
    if dimensions is None or dimensions == vectors.shape[1]:
        return vectors
    out = np.ascontiguousarray(vectors[:, :dimensions], dtype=np.float32)  # (N, d)
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)  # (N, 1)
        out /= np.maximum(norms, np.float32(1e-12))
    return out


def response_body(request: EmbeddingRequest, vectors: np.ndarray, tokens: int) -> bytes:
    """OpenAI's ``{"object": "list", "data": [...], "model", "usage"}`` as JSON bytes.

    Args:
        request: The checked request (its model id, encoding).
        vectors: (N, d) float32, in input order.
        tokens: Tokens the model embedded for the request (special tokens and a query's examples included).
    """
    if request.encoding == "base64":
        rows: list[Any] = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
    else:
        rows = vectors.tolist()
    data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return json.dumps({"object": "list", "data": data, "model": request.model, "usage": usage}).encode()
