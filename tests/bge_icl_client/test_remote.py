"""The adapters' remote mode against a real ``bge-icl serve`` app (uvicorn on a thread, 127.0.0.1, a free port):
``BgeIclEmbeddings`` / ``BgeIclEmbedding`` with ``endpoint=`` give the local adapters' vectors for queries and
passages, batch, run async, and raise the server's errors with their fields."""

from __future__ import annotations

import asyncio
import pickle
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from bge_icl import WEB_SEARCH_INSTRUCTION
from bge_icl.errors import OptionTypeError
from bge_icl_client import Endpoint, RemoteError
from bge_icl_server import RunningServer, ServerConfig, load_example_set, serve_in_thread
from langchain_bge_icl import BgeIclEmbeddings
from llamaindex_bge_icl import BgeIclEmbedding

KEY = "remote-key"
QUERIES = ["how much protein should a female eat", "summit define", "Ünïcödé ☃ café"]
PASSAGES = [f"passage {i}: the summit of a mountain is its highest point" for i in range(7)]


@pytest.fixture(scope="module")
def server(tiny_dir: Path) -> Iterator[RunningServer]:
    config = ServerConfig(model=str(tiny_dir), served_name="tiny", example_sets={"web-search": load_example_set(
        "web-search")}, api_key=KEY, options={"devices": "cpu"})  # fmt: skip
    with serve_in_thread(config) as running:
        yield running


@pytest.fixture(scope="module")
def endpoint(server: RunningServer) -> Endpoint:
    return Endpoint(base_url=server.api_url, model="web-search", api_key=KEY, batch_size=3)  # 7 passages: 3 requests


@pytest.fixture(scope="module")
def local(tiny_dir: Path) -> BgeIclEmbeddings:
    """The local adapter with the web-search set's examples and instruction, built without the server's code."""
    import json
    from importlib import resources

    web = json.loads(resources.files("bge_icl").joinpath("data/examples/web-search.json").read_text("utf-8"))
    return BgeIclEmbeddings(model=str(tiny_dir), devices="cpu", examples_for_task=web,
                            query_instruction_for_retrieval=WEB_SEARCH_INSTRUCTION)  # fmt: skip


def changed(endpoint: Endpoint, **changes: object) -> Endpoint:
    return Endpoint.model_validate({**endpoint.model_dump(), **changes})


def test_langchain_remote_vectors_equal_the_local_adapters(endpoint: Endpoint, local: BgeIclEmbeddings) -> None:
    remote = BgeIclEmbeddings(endpoint=endpoint)
    np.testing.assert_allclose(remote.embed_documents(PASSAGES), local.embed_documents(PASSAGES), atol=1e-5)
    for query in QUERIES:
        np.testing.assert_allclose(remote.embed_query(query), local.embed_query(query), atol=1e-5)
    assert not np.allclose(remote.embed_query(PASSAGES[0]), remote.embed_documents(PASSAGES[:1])[0], atol=1e-3)
    assert remote.dimension == local.dimension
    assert remote.embed_documents([]) == []


async def test_langchain_remote_async(endpoint: Endpoint, local: BgeIclEmbeddings) -> None:
    remote = BgeIclEmbeddings(endpoint=endpoint)
    docs, *queries = await asyncio.gather(remote.aembed_documents(PASSAGES), *map(remote.aembed_query, QUERIES))
    np.testing.assert_allclose(docs, local.embed_documents(PASSAGES), atol=1e-5)
    np.testing.assert_allclose(queries, [local.embed_query(q) for q in QUERIES], atol=1e-5)


async def test_llamaindex_remote_vectors_sync_and_async(endpoint: Endpoint, local: BgeIclEmbeddings) -> None:
    remote = BgeIclEmbedding(endpoint=endpoint, embed_batch_size=2)
    expected_docs = local.embed_documents(PASSAGES)
    np.testing.assert_allclose(remote.get_text_embedding_batch(PASSAGES), expected_docs, atol=1e-5)
    np.testing.assert_allclose(await remote.aget_text_embedding_batch(PASSAGES), expected_docs, atol=1e-5)
    np.testing.assert_allclose(remote.get_text_embedding(PASSAGES[1]), expected_docs[1], atol=1e-5)
    np.testing.assert_allclose(remote.get_query_embedding(QUERIES[0]), local.embed_query(QUERIES[0]), atol=1e-5)
    np.testing.assert_allclose(await remote.aget_query_embedding(QUERIES[1]), local.embed_query(QUERIES[1]),
                               atol=1e-5)  # fmt: skip


def test_errors_carry_the_servers_fields(server: RunningServer, endpoint: Endpoint) -> None:
    unknown = BgeIclEmbeddings(endpoint=changed(endpoint, model="nope"))
    with pytest.raises(RemoteError, match=re.escape("the embeddings server answered 404: the model 'nope' is not "
                                                    "served here; served model ids: tiny, web-search")) as raised:
        unknown.embed_query("q")
    assert (raised.value.status, raised.value.code, raised.value.param) == (404, "model_not_found", "model")
    wrong_key = BgeIclEmbedding(endpoint=changed(endpoint, api_key="wrong"))
    with pytest.raises(RemoteError, match="answered 401: incorrect API key") as raised:
        wrong_key.get_text_embedding("x")
    assert (raised.value.status, raised.value.code) == (401, "invalid_api_key")
    remote = BgeIclEmbeddings(endpoint=endpoint)
    with pytest.raises(TypeError, match=re.escape("item 1 is int, expected str")):  # checked before any request
        remote.embed_documents(["a", 3])  # type: ignore[list-item]


def test_options_are_the_servers(endpoint: Endpoint, tiny_dir: Path) -> None:
    message = ("with an endpoint the options are the server's (bge-icl serve's flags, its model ids): got "
               "['model_name', 'query_max_length']; pick the model id in Endpoint(model=...) instead")
    with pytest.raises(OptionTypeError, match=re.escape(message)) as raised:
        BgeIclEmbeddings(endpoint=endpoint, model=str(tiny_dir), query_max_length=64)
    assert raised.value.option == "model_name"
    remote = BgeIclEmbedding(endpoint=endpoint)
    with pytest.raises(TypeError, match=re.escape("the options ['query_max_length'] are the server's")):
        remote.with_options(query_max_length=64)
    assert remote.with_options(embed_batch_size=5).embed_batch_size == 5
    with pytest.raises(ValueError, match="frozen"):
        remote.endpoint = endpoint  # type: ignore[misc]
    other = remote.with_options(endpoint=changed(endpoint, model="tiny"))
    assert other.embedder.endpoint.model == "tiny"
    again = pickle.loads(pickle.dumps(remote))
    assert again.get_text_embedding(PASSAGES[0]) == remote.get_text_embedding(PASSAGES[0])
