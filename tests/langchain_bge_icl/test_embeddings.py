"""BgeIclEmbeddings: options, parity with the core, shared weights, from_embedder / with_examples, errors."""

from __future__ import annotations

import copy
import importlib
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("langchain_core")

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel

from bge_icl import WEB_SEARCH_INSTRUCTION, EmbedderOptions, ICLEmbedder
from langchain_bge_icl import BgeIclEmbeddings
from tests.conftest import NOTEBOOK_DOCUMENTS, NOTEBOOK_EXAMPLES, NOTEBOOK_QUERIES

OTHER_EXAMPLES = [
    {
        "instruct": "Retrieve the definition of a word.",
        "query": "apex",
        "response": "The top or highest part of something.",
    }
]


def test_is_a_pydantic_langchain_embeddings(embeddings: BgeIclEmbeddings) -> None:
    assert isinstance(embeddings, BaseModel)
    assert isinstance(embeddings, Embeddings)
    assert embeddings.dimension == 64
    assert BgeIclEmbeddings.model_fields["model_name"].default == "BAAI/bge-en-icl"


def test_every_field_is_documented() -> None:
    undocumented = [name for name, field in BgeIclEmbeddings.model_fields.items() if not field.description]
    assert not undocumented


def test_model_alias_and_name_are_the_same_option(tiny_path: str) -> None:
    by_alias = BgeIclEmbeddings(model=tiny_path, devices="cpu")
    by_name = BgeIclEmbeddings(model_name=tiny_path, devices="cpu")
    by_flag_name = BgeIclEmbeddings(model_name_or_path=tiny_path, devices="cpu")
    assert by_alias.model_name == by_name.model_name == by_flag_name.model_name == tiny_path
    assert by_alias.model_dump()["model_name"] == tiny_path


def test_fields_are_the_core_options_and_the_endpoint() -> None:
    from bge_icl_client.adapter import ServedModel

    assert set(BgeIclEmbeddings.model_fields) == {*EmbedderOptions.model_fields, "endpoint"}
    for name, field in BgeIclEmbeddings.model_fields.items():
        declared = EmbedderOptions if name != "endpoint" else ServedModel  # the remote mode's one declared field
        assert field.description == declared.model_fields[name].description


def test_vectors_match_the_core(embeddings: BgeIclEmbeddings, core: ICLEmbedder) -> None:
    query = embeddings.embed_query(NOTEBOOK_QUERIES[0])
    documents = embeddings.embed_documents(NOTEBOOK_DOCUMENTS)
    assert all(type(x) is float for x in query)
    assert all(type(x) is float for row in documents for x in row)
    assert query == core.encode_queries([NOTEBOOK_QUERIES[0]])[0].tolist()
    assert documents == core.encode_corpus(NOTEBOOK_DOCUMENTS).tolist()
    assert embeddings.embed_documents([]) == []


def test_query_and_document_vectors_differ_when_examples_are_set(embeddings: BgeIclEmbeddings) -> None:
    text = NOTEBOOK_QUERIES[0]
    query, document = np.array(embeddings.embed_query(text)), np.array(embeddings.embed_documents([text])[0])
    assert not np.allclose(query, document)


def test_instances_with_the_same_model_share_weights(embeddings: BgeIclEmbeddings, tiny_path: str) -> None:
    zero_shot = BgeIclEmbeddings(model=tiny_path, devices="cpu", dtype="float32")
    other_task = BgeIclEmbeddings(model_name=tiny_path, devices="cpu", dtype="float32",  # type: ignore[call-arg]
                                  examples_for_task=OTHER_EXAMPLES)  # fmt: skip
    assert zero_shot.embedder.replicas[0] is embeddings.embedder.replicas[0]
    assert other_task.embedder.replicas[0] is embeddings.embedder.replicas[0]
    eager = BgeIclEmbeddings(model=tiny_path, devices="cpu", dtype="float32", attn_implementation="eager")
    assert eager.embedder.replicas[0] is not embeddings.embedder.replicas[0]


def test_from_embedder_uses_that_embedder(core: ICLEmbedder, embeddings: BgeIclEmbeddings) -> None:
    wrapped = BgeIclEmbeddings.from_embedder(core)
    assert wrapped.embedder is core
    assert list(wrapped.examples_for_task or ()) == NOTEBOOK_EXAMPLES
    assert wrapped.query_instruction_for_retrieval == WEB_SEARCH_INSTRUCTION
    assert wrapped.options() == core.options
    assert (wrapped.devices, wrapped.embedder.torch_dtype) == ("cpu", torch.float32)
    assert wrapped.embed_query("summit define") == embeddings.embed_query("summit define")
    with pytest.raises(TypeError, match=r"takes a bge_icl\.ICLEmbedder, got BgeIclEmbeddings"):
        BgeIclEmbeddings.from_embedder(embeddings)  # type: ignore[arg-type]


def test_from_embedder_keeps_every_replica(tiny_path: str) -> None:
    core = ICLEmbedder(tiny_path, devices=["cpu", "cpu"])
    wrapped = BgeIclEmbeddings.from_embedder(core)
    assert wrapped.devices == ("cpu", "cpu")
    rebuilt = BgeIclEmbeddings(**wrapped.model_dump())
    assert len(rebuilt.embedder.replica_devices) == 2
    assert rebuilt.embedder.replicas == core.replicas  # same two loaded models, through the registry


def test_with_examples_shares_weights_and_changes_queries_only(embeddings: BgeIclEmbeddings) -> None:
    other = embeddings.with_examples(OTHER_EXAMPLES)
    assert isinstance(other, BgeIclEmbeddings)
    assert other.embedder.replicas[0] is embeddings.embedder.replicas[0]
    assert list(other.examples_for_task or ()) == OTHER_EXAMPLES
    assert list(embeddings.examples_for_task or ()) == NOTEBOOK_EXAMPLES  # the original is unchanged
    assert other.query_instruction_for_retrieval == WEB_SEARCH_INSTRUCTION
    assert other.embed_query("summit define") != embeddings.embed_query("summit define")
    assert other.embed_documents(NOTEBOOK_DOCUMENTS) == embeddings.embed_documents(NOTEBOOK_DOCUMENTS)
    assert embeddings.with_examples(None).examples_for_task is None


def test_deep_copies_share_the_loaded_model(embeddings: BgeIclEmbeddings) -> None:
    copied = copy.deepcopy(embeddings)
    assert copied is not embeddings
    assert copied.embedder.replicas[0] is embeddings.embedder.replicas[0]
    assert copied.options() == embeddings.options()
    assert copied.embed_query("summit define") == embeddings.embed_query("summit define")


def test_unknown_option_names_it_and_lists_the_valid_ones(tiny_path: str) -> None:
    hint = r"unknown option 'model_kwargs' \(did you mean devices=, dtype=.*devices"
    with pytest.raises(TypeError, match=hint) as info:
        BgeIclEmbeddings(model=tiny_path, model_kwargs={"device": "cpu"})  # type: ignore[call-arg]
    assert "valid options: attn_implementation, batch_size" in str(info.value)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"dtype": "fp8"}, "dtype='fp8' is not supported; valid: 'auto'"),
        ({"query_max_length": 0}, "query_max_length must be a positive int, got 0"),
        ({"on_truncation": "drop"}, "on_truncation='drop' is not supported; valid: ('warn', 'error', 'ignore')"),
        ({"batch_size": True}, "batch_size"),
        ({"devices": True}, "devices"),
        ({"query_instruction_format": "{}"}, "exactly 2 positional"),
    ],
)
def test_bad_option_values_are_named(tiny_path: str, option: dict[str, object], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        BgeIclEmbeddings(model=tiny_path, devices="cpu", **option)  # type: ignore[arg-type]


def test_bad_examples_are_named(embeddings: BgeIclEmbeddings) -> None:
    with pytest.raises((ValueError, TypeError), match="response"):
        embeddings.with_examples([{"query": "q"}])


def test_missing_model_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(OSError, match=r"cannot load model .*nope.* does not exist"):
        BgeIclEmbeddings(model=str(tmp_path / "nope"), devices="cpu")


def test_import_without_langchain_core_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "langchain_bge_icl" or m.startswith("langchain_bge_icl.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "langchain_core", None)
    with pytest.raises(ImportError, match=r"pip install 'bge-icl\[langchain\]'"):
        importlib.import_module("langchain_bge_icl")
