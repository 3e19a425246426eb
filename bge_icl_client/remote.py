"""``RemoteEmbedder``: a running ``bge-icl serve`` (or ``--ray``) behind the embedder surface the adapters use.

It speaks the server's OpenAI + NVIDIA NIM dialect: ``POST {base_url}/embeddings`` with ``input_type`` ``"query"`` or
``"passage"`` (so queries get the model id's few-shot examples and instruction on the server), base64 vectors, at
most :attr:`Endpoint.batch_size` texts per request. A ``503`` with ``Retry-After`` (a full queue, a draining
server) is retried :attr:`Endpoint.max_retries` times; other errors raise :class:`RemoteError` with the server's
fields. ``httpx`` is imported when the first request is made (``pip install 'bge-icl[client]'``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from bge_icl.kinds import Kind
from bge_icl.optional import optional_import
from bge_icl.options import EmbedderOptions

_INPUT_TYPE = {"queries": "query", "passages": "passage"}


class Endpoint(BaseModel):
    """Where the embeddings come from: a running ``bge-icl serve``.

    Example:
        >>> Endpoint(base_url="http://127.0.0.1:8000/v1", model="web-search")  # doctest: +ELLIPSIS
        Endpoint(base_url='http://127.0.0.1:8000/v1', model='web-search', ...)
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    base_url: str = Field(pattern=r"^https?://")
    """The server's API root, as the ``openai`` client takes it: ``http://host:8000/v1``."""
    model: str = Field(min_length=1)
    """The model id: the served name (zero-shot queries) or an example set's id (``GET /v1/models`` lists them)."""
    api_key: SecretStr | None = None
    """Sent as ``Authorization: Bearer <key>`` when the server has one (``bge-icl serve --api-key``)."""
    timeout: float = Field(default=120.0, gt=0)
    """Seconds one request may take."""
    batch_size: int = Field(default=256, gt=0)
    """Most texts per request (the server refuses more than its ``--max-inputs``, 2,048 by default)."""
    max_retries: int = Field(default=3, ge=0)
    """Retries of a request answered ``503`` (the server is busy or restarting), after its ``Retry-After``."""


class RemoteError(Exception):
    """The server refused or failed a request; the fields are its OpenAI-shaped error body's.

    Attributes:
        status: The HTTP status (``400``, ``401``, ``404``, ``503`` ...).
        code: The server's machine-readable code (``"model_not_found"``, ``"invalid_api_key"``), or None.
        type: ``"invalid_request_error"`` or ``"server_error"``, or None.
        param: The request field at fault (``"input[3]"``: the text's index within the request), or None.
    """

    def __init__(self, message: str, *, status: int, code: str | None = None, type: str | None = None,
                 param: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.code, self.type, self.param = status, code, type, param


@dataclass(frozen=True)
class RemoteEmbedded:
    """The vectors of one call, float32, shape (N, dimension), in input order (as ``ICLEmbedder.embed``'s)."""

    vectors: np.ndarray


class RemoteEmbedder:
    """The adapters' embedder surface (``encode_queries``, ``encode_corpus``, ``embed``, ``aembed``, ...) over HTTP.

    Args:
        endpoint: The server and model id.
    """

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.options = EmbedderOptions()  # the server's options decide; these are never used to embed
        self._client: Any = None
        self._dimension: int | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteEmbedder, (self.endpoint,))

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Query vectors (N, d): the model id's examples and instruction applied by the server."""
        return self.embed(queries, "queries").vectors

    def encode_corpus(self, corpus: Sequence[str]) -> np.ndarray:
        """Passage vectors (N, d)."""
        return self.embed(corpus, "passages").vectors

    def embed(self, texts: Sequence[str], kind: Kind) -> RemoteEmbedded:
        """Embed ``texts`` as ``kind``, :attr:`Endpoint.batch_size` per request, one request after another.

        Raises:
            RemoteError: The server's answer to a request was an error (after the retries of a 503).
        """
        client = self._sync_client()
        return self._result([self._post(client, chunk, kind) for chunk in self._chunks(texts)])

    async def aembed(self, texts: Sequence[str], kind: Kind) -> RemoteEmbedded:
        """:meth:`embed` for asyncio: the requests go out together; cancelling the task cancels them."""
        httpx = _httpx()
        async with httpx.AsyncClient(**self._client_options()) as client:
            rows = await asyncio.gather(*(self._apost(client, chunk, kind) for chunk in self._chunks(texts)))
        return self._result(list(rows))

    @property
    def dimension(self) -> int:
        """Size of each vector (asked of the server once)."""
        if self._dimension is None:
            self._dimension = int(self.encode_corpus(["dimension"]).shape[1])
        return self._dimension

    def fingerprint(self, kind: Kind) -> str:
        """A stable id of what ``kind`` vectors mean here (the server and model id), for cache keys."""
        return hashlib.sha256(f"{self.endpoint.base_url}|{self.endpoint.model}|{kind}".encode()).hexdigest()

    def with_options(self, **options: Any) -> RemoteEmbedder:
        """This embedder; options belong to the server (``bge-icl serve``'s flags), so none may be given.

        Raises:
            TypeError: ``options`` is not empty.
        """
        if options:
            msg = (f"the options {sorted(options)} are the server's (bge-icl serve's flags and --examples); "
                   f"with an endpoint, pick another model id instead")  # fmt: skip
            raise TypeError(msg)
        return self

    # -- HTTP -------------------------------------------------------------------------------------

    def _chunks(self, texts: Sequence[str]) -> list[list[str]]:
        size = self.endpoint.batch_size
        return [list(texts[i : i + size]) for i in range(0, len(texts), size)]

    def _body(self, texts: list[str], kind: Kind) -> dict[str, Any]:
        return {"model": self.endpoint.model, "input": texts, "input_type": _INPUT_TYPE[kind],
                "encoding_format": "base64"}  # fmt: skip

    def _client_options(self) -> dict[str, Any]:
        key = self.endpoint.api_key
        headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key is not None else {}
        return {"base_url": self.endpoint.base_url.rstrip("/"), "headers": headers, "timeout": self.endpoint.timeout}

    def _sync_client(self) -> Any:
        if self._client is None:
            self._client = _httpx().Client(**self._client_options())
        return self._client

    def _post(self, client: Any, texts: list[str], kind: Kind) -> np.ndarray:
        for attempt in range(self.endpoint.max_retries + 1):
            response = client.post("/embeddings", json=self._body(texts, kind))
            wait = _retry_after(response, attempt, self.endpoint.max_retries)
            if wait is None:
                return _vectors(response)
            time.sleep(wait)
        raise AssertionError  # pragma: no cover - the last attempt returns or raises

    async def _apost(self, client: Any, texts: list[str], kind: Kind) -> np.ndarray:
        for attempt in range(self.endpoint.max_retries + 1):
            response = await client.post("/embeddings", json=self._body(texts, kind))
            wait = _retry_after(response, attempt, self.endpoint.max_retries)
            if wait is None:
                return _vectors(response)
            await asyncio.sleep(wait)
        raise AssertionError  # pragma: no cover

    def _result(self, rows: list[np.ndarray]) -> RemoteEmbedded:
        vectors = np.concatenate(rows) if rows else np.zeros((0, self._dimension or 0), dtype=np.float32)  # (N, d)
        if vectors.size:
            self._dimension = int(vectors.shape[1])
        return RemoteEmbedded(vectors)


def _httpx() -> Any:
    return optional_import("httpx", extra="client", needed_by="an endpoint")


def _retry_after(response: Any, attempt: int, retries: int) -> float | None:
    """Seconds to wait before retrying ``response`` (a 503 with retries left), else None."""
    if response.status_code != 503 or attempt >= retries:
        return None
    header = response.headers.get("retry-after", "1")
    return float(header) if header.replace(".", "", 1).isdigit() else 1.0


def _vectors(response: Any) -> np.ndarray:
    """The response's vectors (N, d) in input order, or its error raised as :class:`RemoteError`."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    if response.status_code != 200 or "data" not in body:
        error = body["error"] if isinstance(body.get("error"), dict) else {}
        message = error.get("message") or f"HTTP {response.status_code} from {response.request.url}"
        raise RemoteError(f"the embeddings server answered {response.status_code}: {message}",
                          status=response.status_code, code=error.get("code"), type=error.get("type"),
                          param=error.get("param"))  # fmt: skip
    data = sorted(body["data"], key=lambda d: d["index"])
    return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])  # (N, d)
