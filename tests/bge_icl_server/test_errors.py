"""Every error of the server: OpenAI's body with its four keys, the status code, the field at fault (``input[i]``
for one input) and the message; after each bad request the server answers a good one correctly."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bge_icl import ICLEmbedder
from bge_icl_server import RunningServer, ServerConfig, serve_in_thread
from tests.bge_icl_server.conftest import PASSAGES, SERVED, max_diff

LONG = "mountains and rivers " * 300  # ~900 tokens: past the 512-token limits
IDS = "tiny-icl, web-search, qa"
LISTED = f"{IDS}, tiny-icl:query, web-search:query, qa:query"
TOKEN_IDS = (" (token-id arrays are not supported: send text; langchain-openai's OpenAIEmbeddings sends them unless "
             "check_embedding_ctx_length=False)")
OK = {"model": SERVED, "input": PASSAGES}


def check_error(response: httpx.Response, status: int, message: str, param: str | None, code: str | None = None,
                error_type: str = "invalid_request_error") -> None:  # fmt: skip
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and list(body["error"]) == ["message", "type", "param", "code"]
    assert re.fullmatch(message, body["error"]["message"]), body["error"]["message"]
    assert (body["error"]["type"], body["error"]["param"], body["error"]["code"]) == (error_type, param, code)


def still_answers(url: str, local: dict[str, ICLEmbedder], headers: dict[str, str] | None = None) -> None:
    response = httpx.post(f"{url}/v1/embeddings", json=OK, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    assert max_diff([d["embedding"] for d in response.json()["data"]], local[SERVED].encode_corpus(PASSAGES)) <= 1e-5


BAD_BODIES: list[tuple[str, Any, str, str | None]] = [
    ("not-an-object", [1, 2], re.escape("the request body is an array; send a JSON object with 'model' and 'input'"),
     None),
    ("no-model", {"input": "x"}, re.escape(f"model is missing; served model ids: {IDS}"), "model"),
    ("model-number", {"model": 3, "input": "x"},
     re.escape(f"model is a number; served model ids: {IDS}"), "model"),
    ("no-input", {"model": SERVED}, re.escape("input is missing; send a string or a list of strings"), "input"),
    ("input-object", {"model": SERVED, "input": {"a": "b"}},
     re.escape("input is an object; send a string or a list of strings"), "input"),
    ("empty-list", {"model": SERVED, "input": []}, re.escape("input is an empty list; send at least one string"),
     "input"),
    ("empty-string", {"model": SERVED, "input": ""},
     re.escape("input[0] is an empty string; each input must hold text"), "input[0]"),
    ("empty-item", {"model": SERVED, "input": ["a", "b", ""]},
     re.escape("input[2] is an empty string; each input must hold text"), "input[2]"),
    ("null-item", {"model": SERVED, "input": ["a", "b", "c", None]},
     re.escape("input[3] is null; each input must be a string"), "input[3]"),
    ("number-item", {"model": SERVED, "input": ["a", 7]},
     re.escape(f"input[1] is a number; each input must be a string{TOKEN_IDS}"), "input[1]"),
    ("object-item", {"model": SERVED, "input": ["a", "b", {"text": "c"}]},
     re.escape("input[2] is an object; each input must be a string"), "input[2]"),
    ("bool-item", {"model": SERVED, "input": [True]}, re.escape("input[0] is a boolean; each input must be a string"),
     "input[0]"),
    ("token-ids", {"model": SERVED, "input": [1820, 374]},
     re.escape(f"input[0] is a number; each input must be a string{TOKEN_IDS}"), "input[0]"),
    ("token-id-arrays", {"model": SERVED, "input": [[1820, 374], [2]]},
     re.escape(f"input[0] is an array; each input must be a string{TOKEN_IDS}"), "input[0]"),
    ("input-type", {"model": SERVED, "input": "x", "input_type": "search"},
     re.escape("input_type=\"search\" is not supported; valid: 'queries', 'query', 'passages', 'passage', 'corpus', "
               "'document', 'documents'"), "input_type"),
    ("encoding", {"model": SERVED, "input": "x", "encoding_format": "int8"},
     re.escape("encoding_format=\"int8\" is not supported; valid: 'float' or 'base64'"), "encoding_format"),
    ("truncate-start", {"model": SERVED, "input": "x", "truncate": "START"},
     re.escape("truncate='START' is not supported: a too-long input is cut at its end, as the model embeds the start "
               "of a text; send 'END' (the default) or 'NONE' (a too-long input is an error)"), "truncate"),
    ("truncate-other", {"model": SERVED, "input": "x", "truncate": "end"},
     re.escape("truncate=\"end\" is not supported; valid: 'END' or 'NONE'"), "truncate"),
    ("dimensions-string", {"model": SERVED, "input": "x", "dimensions": "8"},
     re.escape("dimensions is a string; send a positive integer"), "dimensions"),
    ("dimensions-bool", {"model": SERVED, "input": "x", "dimensions": True},
     re.escape("dimensions is a boolean; send a positive integer"), "dimensions"),
    ("dimensions-float", {"model": SERVED, "input": "x", "dimensions": 8.5},
     re.escape("dimensions is a number; send a positive integer"), "dimensions"),
    ("dimensions-zero", {"model": SERVED, "input": "x", "dimensions": 0},
     re.escape("dimensions=0 is out of range; this model's vectors have 1 to 64 dimensions"), "dimensions"),
    ("dimensions-too-many", {"model": SERVED, "input": "x", "dimensions": 65},
     re.escape("dimensions=65 is out of range; this model's vectors have 1 to 64 dimensions"), "dimensions"),
    ("too-long-passage", {"model": SERVED, "input": ["short", "fine", LONG], "truncate": "NONE"},
     re.escape("input[2] is longer than the server's passage limit of 512 tokens (passage_max_length), and truncate "
               "is 'NONE'; shorten it, or send truncate='END' to cut at the limit"), "input[2]"),
    ("too-long-queries", {"model": "web-search", "input": [LONG, "short", LONG], "truncate": "NONE",
                          "input_type": "query"},
     re.escape("input[0], input[2] are longer than the server's query limit of 512 tokens (few-shot examples not "
               "counted) (query_max_length), and truncate is 'NONE'; shorten them, or send truncate='END' to cut at "
               "the limit"), "input[0]"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "message", "param"), [c[1:] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES])
def test_bad_body_is_a_400(server: RunningServer, local: dict[str, ICLEmbedder], body: Any, message: str,
                           param: str | None) -> None:  # fmt: skip
    response = httpx.post(f"{server.api_url}/embeddings", json=body, timeout=60)
    code = "context_length_exceeded" if "truncate" in body and body.get("truncate") == "NONE" else None
    check_error(response, 400, message, param, code)
    still_answers(server.url, local)


@pytest.mark.parametrize("raw", [b'{"model": "tiny-icl", "input": ', b"", b"\xff\xfe", b"model=tiny-icl&input=x"])
def test_malformed_json_is_a_400(server: RunningServer, local: dict[str, ICLEmbedder], raw: bytes) -> None:
    response = httpx.post(f"{server.api_url}/embeddings", content=raw, headers={"content-type": "application/json"})
    check_error(response, 400, r"the request body is not valid JSON \(.+\); send a JSON object such as "
                               r'\{"model": \.\.\., "input": \.\.\.\}', None)  # fmt: skip
    still_answers(server.url, local)


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"model": "tiny-icl", "input": ' + b"[" * 5000 + b"]" * 5000 + b"}"],
                         ids=["brackets", "nested-input"])
def test_deeply_nested_json_is_a_400_with_its_request_id(server: RunningServer, local: dict[str, ICLEmbedder],
                                                         raw: bytes) -> None:  # fmt: skip
    response = httpx.post(f"{server.api_url}/embeddings", content=raw, headers={"X-Request-ID": "deep-1"})
    check_error(response, 400, re.escape("the request body is not valid JSON (nested too deeply); send a JSON object "
                                         'such as {"model": ..., "input": ...}'), None)  # fmt: skip
    assert response.headers["x-request-id"] == "deep-1"
    still_answers(server.url, local)


def test_lone_surrogate_names_its_input(server: RunningServer, local: dict[str, ICLEmbedder]) -> None:
    raw = b'{"model": "tiny-icl", "input": ["fine", "bad \\ud800 text"]}'
    response = httpx.post(f"{server.api_url}/embeddings", content=raw)
    check_error(response, 400, re.escape("input[1] is not valid Unicode (a lone surrogate); send UTF-8 text"),
                "input[1]")  # fmt: skip
    still_answers(server.url, local)


def test_unknown_model_is_a_404(server: RunningServer, local: dict[str, ICLEmbedder]) -> None:
    response = httpx.post(f"{server.api_url}/embeddings", json={"model": "gpt-4", "input": "x"})
    check_error(response, 404, re.escape(f"the model 'gpt-4' is not served here; served model ids: {LISTED}"), "model",
                "model_not_found")  # fmt: skip
    check_error(httpx.get(f"{server.api_url}/models/gpt-4"), 404, ".*not served here.*", "model", "model_not_found")
    still_answers(server.url, local)


def test_unknown_route_and_method(server: RunningServer, local: dict[str, ICLEmbedder]) -> None:
    routes = "routes: POST /v1/embeddings, GET /v1/models, GET /health/live, GET /health/ready, GET /metrics, GET /docs"
    check_error(httpx.get(f"{server.url}/v1/chat/completions"), 404,
                re.escape(f"GET /v1/chat/completions: Not Found; {routes}"), None)  # fmt: skip
    check_error(httpx.get(f"{server.api_url}/embeddings"), 405,
                re.escape(f"GET /v1/embeddings: Method Not Allowed; {routes}"), None)  # fmt: skip
    still_answers(server.url, local)


def test_too_many_inputs_is_a_413(server: RunningServer, local: dict[str, ICLEmbedder]) -> None:
    response = httpx.post(f"{server.api_url}/embeddings", json={"model": SERVED, "input": ["x"] * 2049})
    check_error(response, 413, re.escape("input has 2049 items; this server takes at most 2048 per request (split the "
                                         "request)"), "input", "too_many_inputs")  # fmt: skip
    still_answers(server.url, local)


@pytest.fixture(scope="module")
def small(tiny_dir: Path) -> Iterator[RunningServer]:
    """A server with small limits and an API key."""
    config = ServerConfig(model=str(tiny_dir), served_name=SERVED, api_key="s3cret-key", max_inputs=4,
                          max_request_bytes=2000, options={"devices": "cpu", "dtype": "float32"})  # fmt: skip
    with serve_in_thread(config) as running:
        yield running


KEY = {"Authorization": "Bearer s3cret-key"}


def test_body_past_the_byte_limit_is_a_413(small: RunningServer, local: dict[str, ICLEmbedder]) -> None:
    body = json.dumps({"model": SERVED, "input": ["x" * 2100]}).encode()
    check_error(httpx.post(f"{small.api_url}/embeddings", content=body, headers=KEY), 413,
                re.escape(f"the request body has {len(body)} bytes; this server takes at most 2000 bytes per request "
                          "(split the request)"), None, "request_too_large")  # fmt: skip

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts as the body streams in
        yield body[:1000]
        yield body[1000:]

    check_error(httpx.post(f"{small.api_url}/embeddings", content=chunks(), headers=KEY), 413,
                re.escape("the request body has more than 2000 bytes; this server takes at most 2000 bytes per "
                          "request (split the request)"), None, "request_too_large")  # fmt: skip
    check_error(httpx.post(f"{small.api_url}/embeddings", json={"model": SERVED, "input": ["a"] * 5}, headers=KEY),
                413, re.escape("input has 5 items; this server takes at most 4 per request (split the request)"),
                "input", "too_many_inputs")  # fmt: skip
    still_answers(small.url, local, KEY)


def test_api_key(small: RunningServer, local: dict[str, ICLEmbedder]) -> None:
    no_key = "no API key: send the header 'Authorization: Bearer <key>' (the openai client's api_key)"
    for headers, message in [({}, no_key), ({"Authorization": "s3cret-key"}, no_key),
                             ({"Authorization": "Bearer wrong"}, "incorrect API key"),
                             ({"Authorization": "Bearer s3cret-ke"}, "incorrect API key"),
                             ({"Authorization": "Bearer s3cret-key-and-more"}, "incorrect API key")]:  # fmt: skip
        for response in (httpx.post(f"{small.api_url}/embeddings", json=OK, headers=headers),
                         httpx.get(f"{small.api_url}/models", headers=headers)):  # fmt: skip
            check_error(response, 401, re.escape(message), None, "invalid_api_key")
            assert response.headers["www-authenticate"] == "Bearer"
        still_answers(small.url, local, KEY)
    assert httpx.get(f"{small.api_url}/models", headers={"Authorization": "bearer s3cret-key"}).status_code == 200
    assert httpx.get(f"{small.url}/health").status_code == 200  # no key: it reveals no text
    assert httpx.get(f"{small.url}/metrics").status_code == 200


def test_api_key_through_the_openai_client(small: RunningServer, local: dict[str, ICLEmbedder]) -> None:
    openai = pytest.importorskip("openai")
    with pytest.raises(openai.AuthenticationError, match="incorrect API key"):
        openai.OpenAI(base_url=small.api_url, api_key="wrong", max_retries=0).embeddings.create(model=SERVED, input="x")
    client = openai.OpenAI(base_url=small.api_url, api_key="s3cret-key", max_retries=0)
    got = client.embeddings.create(model=SERVED, input=PASSAGES).data
    assert max_diff([d.embedding for d in got], local[SERVED].encode_corpus(PASSAGES)) <= 1e-5


def test_api_key_is_compared_in_constant_time() -> None:
    import inspect

    from bge_icl_server import app

    source = inspect.getsource(app._authorizer)
    assert "hmac.compare_digest(" in source and "==" not in source.split("compare_digest", 1)[1]
