"""The API's features on the real server: encodings, ``dimensions``, NIM's ``input_type`` and ``truncate``,
``/v1/models``, ``/health``, ``/metrics``, request ids and log lines."""

from __future__ import annotations

import base64
import json
import logging
import re

import httpx
import numpy as np
import pytest

from bge_icl import ICLEmbedder
from bge_icl_server import RunningServer
from bge_icl_server.protocol import response_body
from tests.bge_icl_server.conftest import PASSAGES, QUERIES, SERVED, max_diff

LONG = "mountains and rivers " * 300


def embed(server: RunningServer, **body: object) -> dict:  # type: ignore[type-arg]
    response = httpx.post(f"{server.api_url}/embeddings", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_response_shape_and_both_encodings(server: RunningServer, local: dict[str, ICLEmbedder]) -> None:
    floats = embed(server, model="qa", input=QUERIES, input_type="query")
    raw = embed(server, model="qa", input=QUERIES, input_type="query", encoding_format="base64")
    assert list(floats) == ["object", "data", "model", "usage"] and floats["object"] == "list"
    assert floats["model"] == "qa" and floats["usage"] == raw["usage"]
    assert [(d["object"], d["index"]) for d in floats["data"]] == [("embedding", i) for i in range(3)]
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in raw["data"]])  # (3, 64)
    assert decoded.dtype == np.dtype("<f4") and decoded.shape == (3, 64)
    np.testing.assert_array_equal(decoded, np.asarray([d["embedding"] for d in floats["data"]], dtype=np.float32))
    assert max_diff(decoded, local["qa"].encode_queries(QUERIES)) <= 1e-5


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_the_body_built_row_by_row_is_what_json_dumps_writes(encoding: str) -> None:
    vectors = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)  # (3, 5)
    model = 'qa "ünï" \\ ☃'  # escaped as json.dumps escapes it
    rows = vectors.tolist() if encoding == "float" else [base64.b64encode(v.tobytes()).decode() for v in vectors]
    data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
    whole = {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": 7, "total_tokens": 7}}
    assert response_body(model, encoding, vectors, 7) == json.dumps(whole).encode()


def test_a_single_string_is_one_input(server: RunningServer, local: dict[str, ICLEmbedder]) -> None:
    body = embed(server, model="web-search", input=QUERIES[1], input_type="query")
    assert len(body["data"]) == 1
    assert max_diff(body["data"][0]["embedding"], local["web-search"].encode_queries(QUERIES[1])) <= 1e-5


@pytest.mark.parametrize("encoding", ["float", "base64"])
@pytest.mark.parametrize("dimensions", [1, 16, 63, 64])
def test_dimensions_is_truncate_dim(server: RunningServer, local: dict[str, ICLEmbedder], dimensions: int,
                                    encoding: str) -> None:  # fmt: skip
    for model, kind, texts in (("web-search", "query", QUERIES), (SERVED, "passage", PASSAGES)):
        body = embed(server, model=model, input=texts, input_type=kind, dimensions=dimensions, encoding_format=encoding)
        cut = local[model].with_options(truncate_dim=dimensions)  # the core's truncate_dim, on the same weights
        expected = cut.encode_queries(texts) if kind == "query" else cut.encode_corpus(texts)  # (3, d)
        got = [d["embedding"] for d in body["data"]]
        assert max_diff(got, expected) <= 1e-5


def test_input_type_document_is_a_passage_and_passage_is_the_default(server: RunningServer) -> None:
    default = embed(server, model="web-search", input=PASSAGES)
    assert default == embed(server, model="web-search", input=PASSAGES, input_type="passage")
    assert default == embed(server, model="web-search", input=PASSAGES, input_type="document")
    assert default != embed(server, model="web-search", input=PASSAGES, input_type="query")


def test_truncate_end_cuts_as_the_core_does(server: RunningServer, local: dict[str, ICLEmbedder]) -> None:
    texts = ["short", LONG]
    for body in (embed(server, model="qa", input=texts), embed(server, model="qa", input=texts, truncate="END")):
        expected = local["qa"].encode_corpus(texts, on_truncation="ignore")
        assert max_diff([d["embedding"] for d in body["data"]], expected) <= 1e-5
        tokens = sum(len(ids) for ids in local["qa"].tokenize_corpus(texts).ids)
        assert body["usage"]["prompt_tokens"] == tokens and max(map(len, local["qa"].tokenize_corpus(texts).ids)) == 512
    body = embed(server, model="qa", input=[LONG], input_type="query", truncate="END")
    assert max_diff(body["data"][0]["embedding"], local["qa"].encode_queries([LONG], on_truncation="ignore")) <= 1e-5


def test_models_in_openais_shape(server: RunningServer) -> None:
    listing = httpx.get(f"{server.api_url}/models").json()
    assert listing["object"] == "list"
    ids = [SERVED, "web-search", "qa"]
    assert [m["id"] for m in listing["data"]] == [*ids, *(f"{i}:query" for i in ids)]
    for card in listing["data"]:
        assert card == {"id": card["id"], "object": "model", "created": 0, "owned_by": "bge-icl", "root": SERVED}
    assert httpx.get(f"{server.api_url}/models/web-search").json() == listing["data"][1]


def test_health(server: RunningServer) -> None:
    response = httpx.get(f"{server.url}/health")
    assert (response.status_code, response.json()) == (200, {"status": "ready"})


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_metrics(server: RunningServer) -> None:
    before = httpx.get(f"{server.url}/metrics").text
    embed(server, model=SERVED, input=PASSAGES)
    httpx.post(f"{server.api_url}/embeddings", json={"model": SERVED, "input": []})
    response = httpx.get(f"{server.url}/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=")
    text = response.text
    for name in ("bge_icl_requests_total", "bge_icl_rows_total", "bge_icl_forward_passes_total", "bge_icl_queue_rows",
                 "bge_icl_request_duration_seconds", "bge_icl_prefix_hits_total", "bge_icl_ready"):  # fmt: skip
        assert f"# TYPE {name.removesuffix('_total')} " in text or f"# TYPE {name} " in text, name
    ok = f'bge_icl_requests_total{{code="200",model="{SERVED}",route="/v1/embeddings"}}'
    bad = 'bge_icl_requests_total{code="400",model="-",route="/v1/embeddings"}'
    assert _metric(text, ok) >= _metric(before, ok) + 1 if ok in before else _metric(text, ok) >= 1
    assert _metric(text, bad) >= 1
    assert _metric(text, "bge_icl_rows_total") >= _metric(before, "bge_icl_rows_total") + 3
    assert 1 <= _metric(text, "bge_icl_forward_passes_total") <= _metric(text, "bge_icl_rows_total")
    assert _metric(text, "bge_icl_queue_rows") == 0 and _metric(text, "bge_icl_ready") == 1
    assert _metric(text, f'bge_icl_request_duration_seconds_count{{model="{SERVED}",route="/v1/embeddings"}}') >= 1
    inputs = f'bge_icl_inputs_total{{model="{SERVED}"}}'
    assert _metric(text, inputs) >= (_metric(before, inputs) if inputs in before else 0) + 3
    assert "/health" not in text and "/metrics" not in text  # only /v1/ routes are counted


def test_log_lines_name_the_request_never_its_texts(server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    secret = "the launch code is 0000"
    with caplog.at_level(logging.INFO, logger="bge_icl_server"):
        ok = httpx.post(f"{server.api_url}/embeddings", json={"model": "qa", "input": [secret, "b"]},
                        headers={"X-Request-ID": "req-42"})  # fmt: skip
        bad = httpx.post(f"{server.api_url}/embeddings", json={"model": "qa", "input": [secret, None]})
    assert ok.headers["x-request-id"] == "req-42" and re.fullmatch(r"[0-9a-f]{16}", bad.headers["x-request-id"])
    lines = [r.getMessage() for r in caplog.records if r.name == "bge_icl_server"]
    assert any(re.fullmatch(r"request req-42 POST /v1/embeddings model=qa inputs=2 bytes=\d+ status=200 [0-9.]+ ms", x)
               for x in lines), lines  # fmt: skip
    rid = bad.headers["x-request-id"]
    assert any(re.fullmatch(rf"request {rid} POST /v1/embeddings model=- inputs=- bytes=\d+ status=400 [0-9.]+ ms "
                            r"error=invalid_request_error", x) for x in lines), lines  # fmt: skip
    assert not any(secret in x or "launch" in x for x in lines)
    assert not any("launch" in r.getMessage() for r in caplog.records)
    with caplog.at_level(logging.INFO, logger="bge_icl_server"):
        httpx.post(f"{server.api_url}/embeddings", json={"model": "evil\nrequest forged", "input": "x"})
        httpx.get(f"{server.url}/v1/models%0Aforged%20line")
    forged = [r.getMessage() for r in caplog.records if r.name == "bge_icl_server"][-2:]
    assert "model=- inputs=1 " in forged[0] and "status=404" in forged[0]  # an unknown model id is not logged
    assert "/v1/models?forged?line" in forged[1] and all("\n" not in x for x in forged)
