"""The options are declared once (EmbedderOptions), normalized alike, fixed after construction, fingerprinted."""

from __future__ import annotations

import copy
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from bge_icl import EmbedderOptions, FrozenOptionError, ICLEmbedder
from tests.bge_icl.cases import WEB
from tests.conftest import NOTEBOOK_EXAMPLES


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("device", "did you mean devices?"),
        ("max_length", "did you mean passage_max_length or query_max_length?"),
        ("instruction", "did you mean query_instruction_for_retrieval?"),
        ("examples", "did you mean examples_for_task?"),
        ("batchsize", "did you mean batch_size?"),  # a close match found by difflib
        ("model_kwargs", "did you mean devices=, dtype="),
    ],
)
def test_unknown_names_raise_with_the_valid_list_and_a_hint(tiny_dir: Path, name: str, hint: str) -> None:
    expected = f"unknown option {name!r} ({hint}"
    with pytest.raises(TypeError, match=re.escape(expected)) as info:
        ICLEmbedder(str(tiny_dir), **{name: 1})
    valid = "valid options: attn_implementation, batch_size, batch_wait_ms, cache_dir, convert_to_numpy, devices,"
    assert valid in str(info.value)
    with pytest.raises(TypeError, match=re.escape(expected)):
        EmbedderOptions(**{name: 1})


def test_several_unknown_names_are_all_listed() -> None:
    with pytest.raises(TypeError, match=re.escape("unknown options 'bogus', 'device' (did you mean devices?);")):
        EmbedderOptions(device="cpu", bogus=1)


@pytest.mark.parametrize("spelling", ["model_name", "model_name_or_path", "model"])
def test_every_spelling_of_the_model_option_is_the_same_option(tiny_dir: Path, spelling: str) -> None:
    emb = ICLEmbedder(**{spelling: str(tiny_dir)}, devices="cpu")
    assert emb.options.model_name == str(tiny_dir)
    twice = f"the model is given twice: as the first argument and as {spelling}="
    if spelling == "model_name_or_path":  # Python itself refuses this one: it is the argument's name
        twice = "got multiple values for argument 'model_name_or_path'"
    with pytest.raises(TypeError, match=re.escape(twice)):
        ICLEmbedder(str(tiny_dir), **{spelling: str(tiny_dir)})


def test_spellings_are_normalized_once() -> None:
    a = EmbedderOptions(
        examples_for_task=tuple(NOTEBOOK_EXAMPLES),
        query_instruction_for_retrieval=WEB,
        batch_size=np.int64(8),
        query_max_length=np.int32(64),
        dtype=torch.float16,
        devices=[torch.device("cpu"), np.int64(0)],
        normalize_embeddings=np.bool_(True),
        cache_dir=Path("/tmp/hf"),
    )
    b = EmbedderOptions(
        examples_for_task=NOTEBOOK_EXAMPLES,
        query_instruction_for_retrieval=WEB,
        batch_size=8,
        query_max_length=64,
        dtype="fp16",
        devices=("cpu", 0),
        cache_dir="/tmp/hf",
    )
    assert a == b
    assert (a.batch_size, a.dtype, a.devices, a.cache_dir) == (8, "float16", ("cpu", 0), "/tmp/hf")
    assert type(a.batch_size) is int and isinstance(a.examples_for_task, tuple)
    assert a.model_dump()["examples_for_task"] == NOTEBOOK_EXAMPLES  # dumps hold plain lists
    assert EmbedderOptions(**a.model_dump()) == a  # and validate back to the same options


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"batch_size": True}, ValueError, "batch_size must be a positive int, got True"),
        ({"batch_size": 2.0}, ValueError, "batch_size must be a positive int, got 2.0"),
        ({"batch_size": "8"}, ValueError, "batch_size must be a positive int, got '8'"),
        ({"max_batch_tokens": 0}, ValueError, "max_batch_tokens must be a positive int, got 0"),
        ({"dtype": "fp8"}, ValueError, "dtype='fp8' is not supported; valid: 'auto', 'float16'"),
        ({"dtype": torch.int8}, ValueError, "dtype=torch.int8 is not supported"),
        ({"devices": 1.5}, TypeError, "devices entry 1.5 is float"),
        ({"devices": True}, TypeError, "devices=True is not a device"),
        ({"devices": []}, ValueError, "devices=[] names no device"),
        ({"normalize_embeddings": "yes"}, TypeError, "normalize_embeddings must be a bool, got 'yes'"),
        ({"show_progress": 1}, TypeError, "show_progress must be a bool or None, got 1"),
        ({"suffix": None}, TypeError, "suffix must be a str, got NoneType"),
        ({"query_instruction_for_retrieval": 3}, TypeError, "query_instruction_for_retrieval must be a str or None"),
        ({"on_truncation": "drop"}, ValueError, "on_truncation='drop' is not supported; valid: ('warn', 'error'"),
        ({"attn_implementation": "flash"}, ValueError, "attn_implementation='flash' is not supported; valid:"),
        ({"model_name": ""}, ValueError, "model_name must be a non-empty str (hub id or local directory), got ''"),
        ({"examples_for_task": "x"}, TypeError, "examples_for_task must be a list of dicts"),
        ({"examples_for_task": [{"query": "q", "response": "r"}]}, ValueError, "examples_for_task[0] has no"),
    ],
)
def test_bad_values_are_named(options: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        EmbedderOptions(**options)


def test_options_are_fixed_after_construction(emb: ICLEmbedder) -> None:
    for target in (emb, emb.options):
        fixed = "option 'batch_size' is fixed once the embedder is built"
        with pytest.raises(FrozenOptionError, match=re.escape(fixed)):
            target.batch_size = 0  # type: ignore[misc]
    hint = "use with_examples(...) or .with_options(examples_for_task"
    with pytest.raises(FrozenOptionError, match=re.escape(hint)):
        emb.examples_for_task = None  # type: ignore[misc]
    assert emb.options.batch_size is None and emb.row_limit == 32  # the option, and what the CPU uses
    with pytest.raises(AttributeError, match=re.escape("use .options.batch_size")):
        _ = emb.batch_size


def test_with_options_builds_a_consistent_embedder_on_the_same_weights(emb: ICLEmbedder) -> None:
    other = emb.with_options(query_max_length=24, query_instruction_for_retrieval="Retrieve a definition.")
    assert other.replicas[0] is emb.replicas[0]
    assert other.options.query_max_length == 24 and emb.options.query_max_length != 24
    fresh = ICLEmbedder(**other.options.model_dump())
    q = ["how much protein should a female eat", "summit define " * 20]
    np.testing.assert_array_equal(other.encode_queries(q), fresh.encode_queries(q))
    with pytest.raises(TypeError, match=re.escape("unknown option 'device' (did you mean devices?)")):
        emb.with_options(device="cpu")
    with pytest.raises(ValueError, match=re.escape("batch_size must be a positive int, got 0")):
        emb.with_options(batch_size=0)


def test_copies_and_pickles_share_the_weights_and_the_vectors(emb: ICLEmbedder) -> None:
    q = ["how much protein should a female eat"]
    for other in (copy.deepcopy(emb), copy.copy(emb), pickle.loads(pickle.dumps(emb))):
        assert other is not emb and other.replicas[0] is emb.replicas[0]
        assert other.options == emb.options
        np.testing.assert_array_equal(other.encode_queries(q), emb.encode_queries(q))
    assert len(pickle.dumps(emb)) < 50_000  # the options, not the weights


def test_fingerprint_names_what_determines_a_vector(tiny_dir: Path, emb: ICLEmbedder) -> None:
    same_dir = ICLEmbedder(str(tiny_dir) + "/", **emb.options.model_dump(exclude={"model_name"}))
    assert same_dir.fingerprint("queries") == emb.fingerprint("queries")  # ckpt and ckpt/ are one model
    assert same_dir.fingerprint("passages") == emb.fingerprint("passages")
    zero_shot = emb.with_examples(None)
    assert zero_shot.fingerprint("queries") != emb.fingerprint("queries")
    assert zero_shot.fingerprint("passages") == emb.fingerprint("passages")  # passages do not see the prompt
    # Settings that do not change vectors do not change the fingerprint.
    assert emb.with_options(batch_size=3, show_progress=False).fingerprint("queries") == emb.fingerprint("queries")
    assert emb.with_options(dtype="bfloat16").fingerprint("passages") != emb.fingerprint("passages")
    assert re.fullmatch(r"[0-9a-f]{64}", emb.fingerprint("queries"))
    with pytest.raises(ValueError, match=re.escape("kind='query' is not supported; valid: ('queries', 'passages')")):
        emb.fingerprint("query")  # type: ignore[arg-type]


def test_stats_and_prefix_seams_are_read_only(emb: ICLEmbedder) -> None:
    emb.encode_queries(["warm up"])
    assert emb.prefix_length == len(emb.prefix_ids or ()) > 0
    with pytest.raises(AttributeError):
        emb.stats = None  # type: ignore[misc]
    with pytest.raises(AttributeError):
        emb.prefix_length = 3  # type: ignore[misc]
    caches = emb.prefix_kv
    caches.clear()
    assert emb.prefix_kv  # a copy was cleared, not the embedder's
