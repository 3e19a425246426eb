"""The three front doors (ICLEmbedder, BgeIclEmbeddings, BgeIclEmbedding) take one set of options alike.

Same names, same accepted and rejected values and messages, options fixed after construction,
``model_copy(update=...)`` consistent, copies and pickles alike, and one fingerprint behind both adapters' caches.
"""

from __future__ import annotations

import copy
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from langchain_core.stores import InMemoryByteStore
from llama_index.core.callbacks import CallbackManager

from bge_icl import EmbedderOptions, FrozenOptionError, ICLEmbedder
from langchain_bge_icl import BgeIclEmbeddings, cache_namespaces
from llamaindex_bge_icl import BgeIclEmbedding
from tests.conftest import NOTEBOOK_EXAMPLES

WEB = "Given a web search query, retrieve relevant passages that answer the query."
DOORS: dict[str, Callable[..., Any]] = {
    "core": ICLEmbedder,
    "langchain": BgeIclEmbeddings,
    "llamaindex": BgeIclEmbedding,
}
Q = ["how much protein should a female eat", "summit define"]


def _options(obj: Any) -> EmbedderOptions:
    return obj.options if isinstance(obj, ICLEmbedder) else obj.options()


def _embedder(obj: Any) -> ICLEmbedder:
    return obj if isinstance(obj, ICLEmbedder) else obj.embedder


@pytest.fixture(params=list(DOORS))
def door(request: pytest.FixtureRequest) -> Callable[..., Any]:
    return DOORS[request.param]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("device", "unknown option 'device' (did you mean devices?); valid options: attn_implementation,"),
        ("max_length", "unknown option 'max_length' (did you mean passage_max_length or query_max_length?)"),
        ("query_instruction", "unknown option 'query_instruction' (did you mean query_instruction_for_retrieval?)"),
    ],
)
def test_unknown_options_raise_everywhere(door: Callable[..., Any], tiny_dir: Path, name: str, message: str) -> None:
    with pytest.raises(TypeError, match=re.escape(message)):
        door(model_name=str(tiny_dir), **{name: "cpu"})


@pytest.mark.parametrize("spelling", ["model_name", "model_name_or_path", "model"])
def test_each_spelling_of_the_model_loads_that_model(door: Callable[..., Any], tiny_dir: Path, spelling: str) -> None:
    built = door(**{spelling: str(tiny_dir)}, devices="cpu")
    assert _options(built).model_name == str(tiny_dir)
    assert _embedder(built).replicas[0].source == str(tiny_dir.resolve())
    assert _embedder(built).dimension == 64  # the tiny checkpoint, not the 4096-wide default model


def test_the_same_values_are_accepted_and_normalized_alike(door: Callable[..., Any], tiny_dir: Path) -> None:
    built = door(
        model_name=str(tiny_dir),
        examples_for_task=tuple(NOTEBOOK_EXAMPLES),
        query_instruction_for_retrieval=WEB,
        batch_size=np.int64(8),
        dtype=torch.float32,
        devices=torch.device("cpu"),
    )
    expected = EmbedderOptions(
        model_name=str(tiny_dir),
        examples_for_task=NOTEBOOK_EXAMPLES,
        query_instruction_for_retrieval=WEB,
        batch_size=8,
        dtype="float32",
        devices="cpu",
    )
    assert _options(built) == expected


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"batch_size": 0}, ValueError, "batch_size must be a positive int, got 0"),
        ({"batch_size": True}, ValueError, "batch_size must be a positive int, got True"),
        ({"dtype": "fp8"}, ValueError, "dtype='fp8' is not supported; valid: 'auto'"),
        ({"devices": 1.5}, TypeError, "devices entry 1.5 is float"),
        ({"on_truncation": "drop"}, ValueError, "on_truncation='drop' is not supported"),
        ({"query_instruction_format": "{}"}, ValueError, "must have exactly 2 positional '{}' slots"),
        ({"examples_for_task": [{"query": "q"}]}, ValueError, "examples_for_task[0] is missing 'response'"),
        ({"prefix_cache": "no"}, TypeError, "prefix_cache must be a bool, got 'no'"),
    ],
)
def test_the_same_values_are_rejected_alike(
    door: Callable[..., Any], tiny_dir: Path, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        door(model_name=str(tiny_dir), **{"devices": "cpu", **options})


def test_options_are_fixed_once_built(door: Callable[..., Any], tiny_dir: Path) -> None:
    built = door(model_name=str(tiny_dir), devices="cpu", query_instruction_for_retrieval=WEB)
    before = _embedder(built).encode_queries(Q)
    for name, value in [("query_instruction_for_retrieval", "other"), ("examples_for_task", None), ("batch_size", 0)]:
        with pytest.raises(FrozenOptionError, match=re.escape(f"option {name!r} is fixed once the embedder is built")):
            setattr(built, name, value)
    assert _options(built).query_instruction_for_retrieval == WEB
    np.testing.assert_array_equal(_embedder(built).encode_queries(Q), before)


def test_llamaindex_own_fields_stay_assignable(tiny_dir: Path) -> None:
    emb = BgeIclEmbedding(model_name=str(tiny_dir), devices="cpu")
    emb.embed_batch_size = 4
    manager = CallbackManager([])
    emb.callback_manager = manager  # what llama_index.core.Settings.embed_model does
    assert (emb.embed_batch_size, emb.callback_manager) == (4, manager)


@pytest.mark.parametrize("door_name", ["langchain", "llamaindex"])
def test_model_copy_builds_a_consistent_embedder_or_raises(door_name: str, tiny_dir: Path) -> None:
    adapter = DOORS[door_name](
        model_name=str(tiny_dir),
        devices="cpu",
        examples_for_task=NOTEBOOK_EXAMPLES,
        query_instruction_for_retrieval=WEB,
    )
    new = "Retrieve a definition."
    changed = adapter.model_copy(update={"query_instruction_for_retrieval": new, "batch_size": 4})
    assert changed.query_instruction_for_retrieval == new == changed.embedder.options.query_instruction_for_retrieval
    assert changed.embedder.replicas[0] is adapter.embedder.replicas[0]
    fresh = ICLEmbedder(**_options(changed).model_dump())
    np.testing.assert_array_equal(changed.embedder.encode_queries(Q), fresh.encode_queries(Q))
    assert adapter.query_instruction_for_retrieval == WEB  # the original is unchanged
    with pytest.raises(TypeError, match=re.escape("unknown option 'device' (did you mean devices?)")):
        adapter.model_copy(update={"device": "cpu"})
    with pytest.raises(ValueError, match=re.escape("batch_size must be a positive int, got 0")):
        adapter.model_copy(update={"batch_size": 0})
    if door_name == "llamaindex":
        assert changed.to_dict()["query_instruction_for_retrieval"] == "Retrieve a definition."
        assert adapter.model_copy(update={"embed_batch_size": 3}).embedder is adapter.embedder  # a framework field


def test_copies_and_pickles_behave_alike(door: Callable[..., Any], tiny_dir: Path) -> None:
    built = door(
        model_name=str(tiny_dir),
        devices="cpu",
        examples_for_task=NOTEBOOK_EXAMPLES,
        query_instruction_for_retrieval=WEB,
    )
    expected = _embedder(built).encode_queries(Q)
    for other in (copy.copy(built), copy.deepcopy(built), pickle.loads(pickle.dumps(built))):
        assert _embedder(other).replicas[0] is _embedder(built).replicas[0]  # never a second copy of the weights
        assert _options(other) == _options(built)
        np.testing.assert_array_equal(_embedder(other).encode_queries(Q), expected)


def test_one_fingerprint_keys_both_adapters_caches(tiny_dir: Path) -> None:
    lc = BgeIclEmbeddings(model_name=str(tiny_dir), devices="cpu", query_instruction_for_retrieval=WEB)
    lc_slash = BgeIclEmbeddings(model_name=str(tiny_dir) + "/", devices="cpu", query_instruction_for_retrieval=WEB)
    li = BgeIclEmbedding(model_name=str(tiny_dir), devices="cpu", query_instruction_for_retrieval=WEB)
    core = lc.embedder
    assert cache_namespaces(core) == (
        f"bge-icl/passage/{core.fingerprint('passages')}/",
        f"bge-icl/query/{core.fingerprint('queries')}/",
    )
    assert cache_namespaces(lc_slash.embedder) == cache_namespaces(core)  # ckpt and ckpt/ are one model
    assert li.embedder.fingerprint("queries") == core.fingerprint("queries")
    # ckpt/ reads the vectors ckpt stored: no forward pass the second time.
    store = InMemoryByteStore()
    first = lc.cached(store).embed_documents(["a passage"])
    calls: list[int] = []
    real = lc_slash.embedder.encode_corpus

    def counted(texts: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(texts, **kwargs)

    object.__setattr__(lc_slash.embedder, "encode_corpus", counted)
    assert lc_slash.cached(store).embed_documents(["a passage"]) == first
    assert not calls
