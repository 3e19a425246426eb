"""Errors carry fields (the option, the value, the item's index, the truncation counts) that callers read instead of
parsing messages; they keep their builtin bases and survive pickling (Ray, multiprocessing)."""

from __future__ import annotations

import copy
import pickle
import re
import warnings
from pathlib import Path

import pytest

from bge_icl import ICLEmbedder, TruncationError, TruncationWarning
from bge_icl.errors import InputTypeError, InputValueError, OptionTypeError, OptionValueError, in_context
from bge_icl.options import EmbedderOptions


@pytest.mark.parametrize(
    ("options", "error", "option", "value", "message"),
    [
        ({"batch_size": 0}, OptionValueError, "batch_size", 0, "batch_size must be a positive int, got 0"),
        ({"query_max_length": -1}, OptionValueError, "query_max_length", -1, "query_max_length must be a positive int"),
        ({"dtype": "int8"}, OptionValueError, "dtype", "int8", "dtype='int8' is not supported; valid: 'auto'"),
        ({"devices": True}, OptionTypeError, "devices", True, "devices=True is not a device"),
        ({"on_truncation": "drop"}, OptionValueError, "on_truncation", "drop", "on_truncation='drop' is not supported"),
        ({"normalize_embeddings": "yes"}, OptionTypeError, "normalize_embeddings", "yes", "must be a bool"),
        ({"device": "cpu"}, OptionTypeError, "device", None, "unknown option 'device' (did you mean devices?)"),
        ({"query_instruction_format": "{}"}, OptionValueError, "query_instruction_format", "{}",
         "must have exactly 2 positional '{}' slots"),
        ({"examples_for_task": [{"query": "q"}]}, OptionValueError, "examples_for_task", [{"query": "q"}],
         "examples_for_task[0] is missing 'response'"),
    ],
)
def test_option_errors_name_the_option_and_value(options, error, option, value, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=re.escape(message)) as info:
        EmbedderOptions.checked(**options)
    assert (info.value.option, info.value.value) == (option, value)


def test_pydantic_keeps_its_validation_error_and_the_cause_carries_the_fields() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        EmbedderOptions(batch_size=0)
    cause = info.value.errors()[0]["ctx"]["error"]
    assert isinstance(cause, OptionValueError) and cause.option == "batch_size"


def test_the_embedder_raises_the_option_error_itself(tiny_dir: Path) -> None:
    with pytest.raises(OptionValueError, match=re.escape("passage_max_length must be a positive int, got 0")) as info:
        ICLEmbedder(str(tiny_dir), devices="cpu", passage_max_length=0)
    assert info.value.option == "passage_max_length"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"query_max_length": 3}, "query_max_length=3 leaves no room for the query"),
        ({"passage_max_length": 2}, "passage_max_length=2 leaves no room for text next to 2 special tokens"),
    ],
)
def test_limits_that_leave_no_room_name_the_option(tiny_dir: Path, options: dict[str, int], message: str) -> None:
    with pytest.raises(OptionValueError, match=re.escape(message)) as info:
        ICLEmbedder(str(tiny_dir), devices="cpu", **options)
    assert (info.value.option, info.value.value) == next(iter(options.items()))
    assert isinstance(info.value, ValueError)


def test_call_arguments_name_themselves(emb: ICLEmbedder) -> None:
    with pytest.raises(OptionValueError) as info:
        emb.encode_corpus(["a"], batch_size=0)
    assert info.value.option == "batch_size"
    with pytest.raises(OptionValueError) as info:
        emb.encode_corpus(["a", "b"], precision="int4")  # type: ignore[arg-type]
    assert (info.value.option, info.value.value) == ("precision", "int4")


def test_input_errors_carry_the_index(emb: ICLEmbedder) -> None:
    with pytest.raises(InputTypeError, match=re.escape("item 2 is NoneType, expected str")) as info:
        emb.encode_corpus(["a", "b", None])  # type: ignore[list-item]
    assert info.value.index == 2 and isinstance(info.value, TypeError)
    with pytest.raises(InputValueError, match="item 1 is not valid Unicode") as bad:
        emb.encode_queries(["a", "\ud800"])
    assert bad.value.index == 1 and isinstance(bad.value, ValueError)
    with pytest.raises(InputTypeError, match="texts must be a str or a list of str, got dict") as whole:
        emb.encode_corpus({"a": 1})  # type: ignore[arg-type]
    assert whole.value.index is None


def test_truncation_reports_carry_counts(emb: ICLEmbedder) -> None:
    texts = ["short", "word " * 40, "also short", "word " * 50]
    limited = emb.with_options(passage_max_length=16)
    with pytest.raises(TruncationError, match=re.escape("2 of 4 passages exceeded passage_max_length=16")) as info:
        limited.encode_corpus(texts, on_truncation="error")
    e = info.value
    assert (e.count, e.total, e.kind, e.option, e.limit, e.indices) == (2, 4, "passages", "passage_max_length", 16,
                                                                        (1, 3))  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        emb.encode_queries(texts, max_length=48, on_truncation="warn")
    [w] = [w.message for w in caught if isinstance(w.message, TruncationWarning)]
    assert emb.tokenize_queries(texts, max_length=48).truncated == [1, 3]
    assert (w.count, w.total, w.kind, w.option, w.limit, w.indices) == (2, 4, "queries", "max_length", 48, (1, 3))


@pytest.mark.parametrize(
    "error",
    [
        OptionValueError("batch_size must be a positive int, got 0", option="batch_size", value=0),
        InputTypeError("item 3 is int, expected str", index=3),
        TruncationError("1 of 2 passages ...", indices=[1], total=2, kind="passages", option="passage_max_length",
                        limit=8),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_pickle_and_copy_with_their_fields(error: Exception) -> None:
    for clone in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
        assert type(clone) is type(error) and str(clone) == str(error) and vars(clone) == vars(error)


def test_in_context_prefixes_the_message_and_keeps_the_fields() -> None:
    error = in_context(OptionValueError("bad", option="examples_for_task", value=[]), "task 'SciFact'")
    assert str(error) == "task 'SciFact': bad" and error.option == "examples_for_task"
