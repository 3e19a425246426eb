"""BgeIclEmbedding as a LlamaIndex BaseEmbedding: vectors, options, serialization, cache, async."""

from __future__ import annotations

import asyncio
import importlib
import json
import pickle
import re
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

import torch
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import ValidationError
from llama_index.core.storage.kvstore import SimpleKVStore

from bge_icl import EmbedderOptions, ICLEmbedder
from llamaindex_bge_icl import QUERY_CACHE_COLLECTION, BgeIclEmbedding
from tests.conftest import NOTEBOOK_DOCUMENTS, NOTEBOOK_EXAMPLES, NOTEBOOK_QUERIES
from tests.llamaindex_bge_icl.conftest import CORPUS
from tests.reliability_helpers import passes_after_cancelling

OTHER_EXAMPLES = [{"instruct": "Retrieve a definition.", "query": "define apex", "response": "The top of something."}]


def _spy(monkeypatch: pytest.MonkeyPatch, emb: BgeIclEmbedding, method: str) -> list[tuple[int, int]]:
    """Record (number of texts, thread id) for each call of the core's ``method``."""
    calls: list[tuple[int, int]] = []
    real: Callable[..., np.ndarray] = getattr(emb.embedder, method)

    def spy(texts: list[str], **kwargs: Any) -> np.ndarray:
        calls.append((len(texts), threading.get_ident()))
        return real(texts, **kwargs)

    monkeypatch.setattr(emb.embedder, method, spy)
    return calls


def test_is_a_base_embedding(emb: BgeIclEmbedding, options: dict[str, Any]) -> None:
    assert BaseEmbedding in type(emb).__mro__
    assert BgeIclEmbedding.class_name() == "BgeIclEmbedding"
    assert BgeIclEmbedding.model_fields["model_name"].default == "BAAI/bge-en-icl"
    assert 1 <= emb.embed_batch_size <= 256
    assert emb.dimension == 64
    assert set(EmbedderOptions.model_fields) <= set(BgeIclEmbedding.model_fields)
    for name, field in EmbedderOptions.model_fields.items():  # inherited, not declared again
        assert BgeIclEmbedding.model_fields[name].description == field.description
    assert BgeIclEmbedding.framework_fields() == sorted({*BaseEmbedding.model_fields, "endpoint"} - {"model_name"})


def test_vectors_match_the_core(emb: BgeIclEmbedding, core: ICLEmbedder) -> None:
    np.testing.assert_allclose(
        emb.get_query_embedding(NOTEBOOK_QUERIES[0]), core.encode_queries(NOTEBOOK_QUERIES)[0], atol=1e-5
    )
    np.testing.assert_allclose(emb.get_text_embedding(CORPUS[0]), core.encode_corpus(CORPUS)[0], atol=1e-5)
    np.testing.assert_allclose(emb.get_text_embedding_batch(CORPUS), core.encode_corpus(CORPUS), atol=1e-5)


def test_query_differs_from_text_with_examples(emb: BgeIclEmbedding) -> None:
    text = NOTEBOOK_QUERIES[0]
    q, t = np.array(emb.get_query_embedding(text)), np.array(emb.get_text_embedding(text))
    assert float(q @ t) < 0.999


def test_a_text_batch_is_one_core_call_and_llamaindex_still_sees_its_chunks(
    fields: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload, LlamaDebugHandler

    debug = LlamaDebugHandler()
    emb = BgeIclEmbedding(**fields, embed_batch_size=4, callback_manager=CallbackManager([debug]))
    tokenized: list[int] = []  # texts tokenized per call: once each, whatever the chunks
    prepare = emb.embedder.prepare
    monkeypatch.setattr(emb.embedder, "prepare", lambda texts, kind, *a: tokenized.append(len(texts)) or prepare(
        texts, kind, *a))  # fmt: skip
    got = emb.get_text_embedding_batch(CORPUS)
    assert tokenized == [8]
    chunks = [end.payload[EventPayload.CHUNKS] for _, end in debug.get_event_pairs(CBEventType.EMBEDDING)]
    assert chunks == [CORPUS[:4], CORPUS[4:]]  # LlamaIndex's events, cache writes and progress keep their chunks
    np.testing.assert_allclose(got, emb.embedder.encode_corpus(CORPUS), atol=1e-6)


def test_options_and_errors(fields: dict[str, Any]) -> None:
    emb = BgeIclEmbedding(**{**fields, "devices": torch.device("cpu"), "dtype": torch.float32})
    assert (emb.devices, emb.dtype) == ("cpu", "float32")
    with pytest.raises(ValidationError, match="batch_size"):
        BgeIclEmbedding(**fields, batch_size=0)
    with pytest.raises(ValidationError, match="query_max_length"):
        BgeIclEmbedding(**{**fields, "query_max_length": -1})
    with pytest.raises(ValidationError, match=re.escape("valid: ('sdpa', 'eager', 'flash_attention_2')")):
        BgeIclEmbedding(**fields, attn_implementation="flash")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"dtype='int8' is not supported; valid: 'auto'"):
        BgeIclEmbedding(**{**fields, "dtype": "int8"})
    with pytest.raises(TypeError, match=re.escape("from_embedder() takes a bge_icl.ICLEmbedder, got dict")):
        BgeIclEmbedding.from_embedder(fields)  # type: ignore[arg-type]


def test_to_dict_from_dict_round_trip(fields: dict[str, Any]) -> None:
    emb = BgeIclEmbedding(**fields, embed_batch_size=8)
    data = emb.to_dict()
    assert data["class_name"] == "BgeIclEmbedding"
    assert data["examples_for_task"] == NOTEBOOK_EXAMPLES and data["embed_batch_size"] == 8
    restored = BgeIclEmbedding.from_dict(json.loads(json.dumps(data)))
    assert restored.to_dict() == data
    assert restored.embedder.replicas[0] is emb.embedder.replicas[0]
    np.testing.assert_allclose(restored.get_query_embedding("q"), emb.get_query_embedding("q"), atol=1e-6)
    assert BgeIclEmbedding.from_json(emb.to_json()).to_dict() == data


def test_pickle_keeps_configuration_not_weights(emb: BgeIclEmbedding) -> None:
    blob = pickle.dumps(emb)
    assert len(blob) < 50_000  # the tiny model's weights alone are ~8 MB
    restored = pickle.loads(blob)
    assert restored.to_dict() == emb.to_dict()
    assert restored.embedder.replicas[0] is emb.embedder.replicas[0]
    assert emb.get_text_embedding("still works") == restored.get_text_embedding("still works")


def test_with_examples_shares_weights(emb: BgeIclEmbedding) -> None:
    other = emb.with_examples(OTHER_EXAMPLES)
    assert isinstance(other, BgeIclEmbedding)
    assert other.embedder.replicas[0] is emb.embedder.replicas[0]
    assert list(other.examples_for_task or ()) == OTHER_EXAMPLES
    assert list(emb.examples_for_task or ()) == NOTEBOOK_EXAMPLES
    q = NOTEBOOK_QUERIES[0]
    assert not np.allclose(other.get_query_embedding(q), emb.get_query_embedding(q), atol=1e-3)
    np.testing.assert_allclose(other.get_text_embedding(q), emb.get_text_embedding(q), atol=1e-6)
    zero_shot = emb.with_examples(None)
    assert zero_shot.embedder.prefix == "" and zero_shot.embedder.replicas[0] is emb.embedder.replicas[0]


def test_from_embedder_shares_weights(core: ICLEmbedder) -> None:
    emb = BgeIclEmbedding.from_embedder(core, embed_batch_size=16)
    assert emb.embedder is core
    assert emb.embed_batch_size == 16
    assert emb.model_name == core.options.model_name
    np.testing.assert_allclose(emb.get_query_embedding("q"), core.encode_queries(["q"])[0], atol=1e-6)
    assert BgeIclEmbedding.from_dict(emb.to_dict()).embedder.replicas[0] is core.replicas[0]
    hint = r"got \['examples_for_task'\]; use embedder.with_options\(...\) first, .*'embed_batch_size'"
    with pytest.raises(TypeError, match=hint):
        BgeIclEmbedding.from_embedder(core, examples_for_task=None)


def test_embeddings_cache_keeps_queries_and_texts_apart(
    fields: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = SimpleKVStore()
    emb = BgeIclEmbedding(**fields, embeddings_cache=cache)
    plain = BgeIclEmbedding(**fields)
    text = NOTEBOOK_QUERIES[0]
    t = emb.get_text_embedding(text)
    q = emb.get_query_embedding(text)  # same string: must not read the passage vector
    assert q == plain.get_query_embedding(text) and t == plain.get_text_embedding(text)
    assert list(cache.get_all(collection="embeddings")) == [text]
    assert len(cache.get_all(collection=QUERY_CACHE_COLLECTION)) == 1

    calls = _spy(monkeypatch, emb, "encode_queries")
    assert emb.get_query_embedding(text) == q  # a hit
    assert calls == []

    # Other examples, same store: a different key, so a different (correct) vector.
    other = emb.with_examples(OTHER_EXAMPLES)
    assert other.embeddings_cache is cache
    assert other.get_query_embedding(text) == plain.with_examples(OTHER_EXAMPLES).get_query_embedding(text)
    assert len(cache.get_all(collection=QUERY_CACHE_COLLECTION)) == 2
    # Batched texts use LlamaIndex's own cache path.
    assert emb.get_text_embedding_batch([text, "fresh passage"])[0] == t


async def test_embeddings_cache_async(fields: dict[str, Any]) -> None:
    cache = SimpleKVStore()
    emb = BgeIclEmbedding(**fields, embeddings_cache=cache)
    text = NOTEBOOK_QUERIES[1]
    t = await emb.aget_text_embedding(text)
    q = await emb.aget_query_embedding(text)
    assert q != t
    assert q == emb.get_query_embedding(text) == await emb.aget_query_embedding(text)
    assert (await emb.aget_text_embedding_batch([text]))[0] == t


async def test_async_matches_sync_and_runs_off_the_loop(
    fields: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    emb = BgeIclEmbedding(**fields, embed_batch_size=4)
    expected_q = emb.get_query_embedding(NOTEBOOK_QUERIES[0])
    expected_batch = emb.get_text_embedding_batch(CORPUS)
    calls: list[tuple[str, int]] = []  # (kind, texts) of each call reaching the core (stage 1, on the loop)
    prepare = emb.embedder.prepare
    monkeypatch.setattr(emb.embedder, "prepare", lambda texts, kind, *a: calls.append((kind, len(texts))) or prepare(
        texts, kind, *a))  # fmt: skip
    passes: list[int] = []  # the thread of each forward pass
    hook = emb.embedder.replicas[0].model.embed_tokens.register_forward_pre_hook(
        lambda module, args: passes.append(threading.get_ident()))
    try:
        assert await emb.aget_query_embedding(NOTEBOOK_QUERIES[0]) == expected_q
        assert await emb.aget_text_embedding(CORPUS[0]) == expected_batch[0]
        np.testing.assert_allclose(await emb.aget_text_embedding_batch(CORPUS), expected_batch, atol=1e-6)
    finally:
        hook.remove()
    loop_thread = threading.get_ident()
    assert passes and all(thread != loop_thread for thread in passes)  # the model never runs on the event loop
    # One query, one text, then the batch: all 8 in one call (tokenized once), whatever embed_batch_size.
    assert calls == [("queries", 1), ("passages", 1), ("passages", 8)]


async def test_concurrent_async_calls_are_queued(emb: BgeIclEmbedding, core: ICLEmbedder) -> None:
    queries = [f"{q} {i}" for i in range(6) for q in NOTEBOOK_QUERIES]
    results = await asyncio.gather(
        *(emb.aget_query_embedding(q) for q in queries), emb.aget_text_embedding_batch(NOTEBOOK_DOCUMENTS)
    )
    np.testing.assert_allclose(np.array(results[:-1]), core.encode_queries(queries), atol=1e-5)
    np.testing.assert_allclose(np.array(results[-1]), core.encode_corpus(NOTEBOOK_DOCUMENTS), atol=1e-5)


async def test_long_async_batch_does_not_block_the_loop(fields: dict[str, Any]) -> None:
    emb = BgeIclEmbedding(**fields, embed_batch_size=16)
    texts = [f"{doc} (copy {i})" for i in range(40) for doc in NOTEBOOK_DOCUMENTS]
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    vectors = await emb.aget_text_embedding_batch(texts)
    done.set()
    await task
    assert len(vectors) == len(texts)
    assert ticks > 5, f"the event loop ticked only {ticks} times while embedding {len(texts)} texts"


def test_import_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "llama_index" or m.startswith("llama_index.")]:
        monkeypatch.setitem(sys.modules, name, None)
    for name in [m for m in sys.modules if m == "llamaindex_bge_icl" or m.startswith("llamaindex_bge_icl.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match=re.escape("pip install 'bge-icl[llamaindex]'")):
        importlib.import_module("llamaindex_bge_icl")


def test_shares_one_model_with_the_langchain_adapter(emb: BgeIclEmbedding, fields: dict[str, Any]) -> None:
    langchain_bge_icl = pytest.importorskip("langchain_bge_icl")
    lc = langchain_bge_icl.BgeIclEmbeddings.from_embedder(emb.embedder)
    assert lc.embedder is emb.embedder
    assert BgeIclEmbedding.from_embedder(lc.embedder).embedder is emb.embedder
    # Built independently, the two adapters still get the same weights from the core registry.
    lc_fields = {k: v for k, v in fields.items() if k != "model_name"}
    separate = langchain_bge_icl.BgeIclEmbeddings(model=fields["model_name"], **lc_fields)
    assert separate.embedder.replicas[0] is emb.embedder.replicas[0]
    q = NOTEBOOK_QUERIES[0]
    np.testing.assert_allclose(separate.embed_query(q), emb.get_query_embedding(q), atol=1e-6)
    np.testing.assert_allclose(separate.embed_documents([q])[0], emb.get_text_embedding(q), atol=1e-6)


async def test_a_cancelled_aget_text_embedding_batch_stops_after_the_running_pass(fields: dict[str, Any]) -> None:
    emb = BgeIclEmbedding(**{**fields, "batch_size": 1}, embed_batch_size=8)  # one passage a pass
    passages = [f"passage {i}" for i in range(48)]
    passes = await passes_after_cancelling(emb.embedder, lambda: emb.aget_text_embedding_batch(passages))
    assert passes <= 2 and emb.embedder.stats.queued_rows == 0  # the running pass, at most one more
    np.testing.assert_allclose(await emb.aget_text_embedding("still usable"), emb.get_text_embedding("still usable"),
                               atol=1e-6)  # fmt: skip
