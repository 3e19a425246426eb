"""Prompt strings: prefix layout, instruction fallback, template and example validation."""

from __future__ import annotations

import re

import pytest

from bge_icl.prompts import (
    DEFAULT_EXAMPLES_INSTRUCTION_FORMAT,
    DEFAULT_QUERY_INSTRUCTION_FORMAT,
    build_prefix,
    format_query,
    validate_examples,
    validate_template,
)


def test_prefix_layout() -> None:
    ex = validate_examples([{"instruct": "T", "query": "q1", "response": "r1"}, {"query": "q2", "response": "r2"}], "D")
    prefix = build_prefix(ex, DEFAULT_EXAMPLES_INSTRUCTION_FORMAT)
    assert prefix == "<instruct>T\n<query>q1\n<response>r1\n\n<instruct>D\n<query>q2\n<response>r2\n\n"


def test_no_examples_is_empty_prefix() -> None:
    assert build_prefix(validate_examples(None, None), DEFAULT_EXAMPLES_INSTRUCTION_FORMAT) == ""
    assert build_prefix(validate_examples([], "x"), DEFAULT_EXAMPLES_INSTRUCTION_FORMAT) == ""


def test_query_format_and_braces_are_literal() -> None:
    assert format_query("a {0} }{", "T {}", DEFAULT_QUERY_INSTRUCTION_FORMAT) == "<instruct>T {}\n<query>a {0} }{"
    assert format_query("as is", None, DEFAULT_QUERY_INSTRUCTION_FORMAT) == "as is"
    ex = validate_examples([{"query": "{x}", "response": "{}"}], "{0}")
    assert build_prefix(ex, DEFAULT_EXAMPLES_INSTRUCTION_FORMAT) == "<instruct>{0}\n<query>{x}\n<response>{}\n\n"


def test_literal_backslash_n_in_templates_becomes_newline() -> None:
    assert validate_template("f", "<instruct>{}\\n<query>{}", 2) == "<instruct>{}\n<query>{}"


@pytest.mark.parametrize("template", ["{}", "{}{}{}", "{0}{1}", "{a}{b}"])
def test_template_slot_count_is_checked(template: str) -> None:
    with pytest.raises(ValueError, match=re.escape("query_instruction_format=") + ".*exactly 2 positional"):
        validate_template("query_instruction_format", template, 2)


def test_broken_template_is_rejected() -> None:
    with pytest.raises(ValueError, match="is not a valid format string"):
        validate_template("suffix_fmt", "{", 1)


@pytest.mark.parametrize(
    ("examples", "error", "message"),
    [
        ("abc", TypeError, "examples_for_task must be a list of dicts"),
        ({"query": "q"}, TypeError, "examples_for_task must be a list of dicts"),
        ([["q", "r"]], TypeError, "examples_for_task[0] is list"),
        (
            [{"query": "q", "response": "r", "answer": "x"}],
            ValueError,
            "examples_for_task[0] has unknown key(s) ['answer']",
        ),
        ([{"query": "q", "response": "r"}, {"query": "q"}], ValueError, "examples_for_task[1] is missing 'response'"),
        ([{"query": 3, "response": "r"}], TypeError, "examples_for_task[0]['query'] is int, expected str"),
        (
            [{"query": "q", "response": "r", "instruct": None}],
            TypeError,
            "examples_for_task[0]['instruct'] is NoneType",
        ),
    ],
)
def test_examples_are_validated(examples: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        validate_examples(examples, "task")  # type: ignore[arg-type]


def test_missing_instruct_without_default_is_an_error() -> None:
    with pytest.raises(ValueError, match=re.escape("examples_for_task[0] has no 'instruct'")):
        validate_examples([{"query": "q", "response": "r"}], None)
