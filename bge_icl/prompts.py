"""ICL prompt formatting: the few-shot prefix, the query template, and their validation.

This module only builds strings. Tokenization lives in :mod:`bge_icl.tokenization`.

Anatomy of an ICL query (FlagEmbedding's ``ICLLLMEmbedder`` layout)::

    <s> <instruct>{task}\\n<query>{q1}\\n<response>{p1}\\n\\n ... <instruct>{task}\\n<query>{query} \\n<response> </s>
        |------------------- prefix (examples) ---------------------|---- formatted query -----|- suffix -|
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import TypedDict

from typing_extensions import NotRequired

from bge_icl.errors import OptionTypeError, OptionValueError

DEFAULT_QUERY_INSTRUCTION_FORMAT = "<instruct>{}\n<query>{}"
DEFAULT_EXAMPLES_INSTRUCTION_FORMAT = "<instruct>{}\n<query>{}\n<response>{}"
DEFAULT_SUFFIX = "\n<response>"
WEB_SEARCH_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query."
EXAMPLE_SEPARATOR = "\n\n"


class ICLExample(TypedDict):
    """One few-shot example: a task instruction, a query and the passage that answers it."""

    instruct: NotRequired[str]
    query: str
    response: str


_EXAMPLE_KEYS = ("instruct", "query", "response")


def unescape_newlines(template: str) -> str:
    r"""Turn a literal backslash-n into a newline, as FlagEmbedding does for its formats.

    Example:
        >>> unescape_newlines("<instruct>{}\\n<query>{}")
        '<instruct>{}\n<query>{}'
    """
    return template.replace("\\n", "\n")


def validate_template(name: str, template: str, slots: int) -> str:
    """Check that ``template`` is a string with exactly ``slots`` positional ``{}`` fields.

    Args:
        name: The option's name, used in the error message.
        template: The format string.
        slots: How many ``{}`` fields it must have.

    Returns:
        The template with literal ``\\n`` turned into newlines.

    Raises:
        TypeError: The template is not a string.
        ValueError: The template has another number of fields, or named/numbered fields.
    """
    if not isinstance(template, str):
        msg = f"{name} must be a str with {slots} '{{}}' slots, got {type(template).__name__}"
        raise OptionTypeError(msg, option=name, value=template)
    template = unescape_newlines(template)
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        msg = f"{name}={template!r} is not a valid format string ({e}); escape literal braces as '{{{{' and '}}}}'"
        raise OptionValueError(msg, option=name, value=template) from e
    if len(fields) != slots or any(f != "" for f in fields):
        msg = (
            f"{name}={template!r} must have exactly {slots} positional '{{}}' slots, "
            f"found {len(fields)} field(s): {fields!r}"
        )
        raise OptionValueError(msg, option=name, value=template)
    return template


def validate_examples(
    examples: Sequence[Mapping[str, str]] | None, default_instruct: str | None
) -> tuple[ICLExample, ...]:
    """Check few-shot examples and return them as an immutable tuple, each with its ``instruct``
    (:func:`check_examples`, then :func:`fill_instructions`).

    Raises:
        TypeError: ``examples`` is not a list of mappings, or a field is not a string.
        ValueError: An example has unknown or missing keys, or no instruction at all.
    """
    return fill_instructions(check_examples(examples), default_instruct)


def check_examples(examples: object) -> tuple[dict[str, str], ...]:
    """The shape and types of few-shot examples: a list of mappings with string ``query`` and ``response`` and an
    optional string ``instruct``; returned as a tuple of dicts (None: no examples, ``()``).

    Raises:
        TypeError: ``examples`` is not a list of mappings, or a field is not a string.
        ValueError: An example has unknown or missing keys.
    """
    if examples is None:
        return ()
    if isinstance(examples, (str, bytes, Mapping)) or not isinstance(examples, Sequence):
        msg = f"examples_for_task must be a list of dicts with keys {_EXAMPLE_KEYS}, got {type(examples).__name__}"
        raise OptionTypeError(msg, option="examples_for_task", value=examples)
    for i, example in enumerate(examples):
        if not isinstance(example, Mapping):
            msg = f"examples_for_task[{i}] is {type(example).__name__}, expected a dict with keys {_EXAMPLE_KEYS}"
            raise OptionTypeError(msg, option="examples_for_task", value=examples)
        unknown = sorted(set(example) - set(_EXAMPLE_KEYS), key=str)
        if unknown:
            msg = f"examples_for_task[{i}] has unknown key(s) {unknown}; valid keys are {_EXAMPLE_KEYS}"
            raise OptionValueError(msg, option="examples_for_task", value=examples)
        for key in ("query", "response"):
            if key not in example:
                msg = f"examples_for_task[{i}] is missing {key!r}; each example needs 'query' and 'response'"
                raise OptionValueError(msg, option="examples_for_task", value=examples)
        for key, value in example.items():
            if not isinstance(value, str):
                msg = f"examples_for_task[{i}][{key!r}] is {type(value).__name__}, expected str"
                raise OptionTypeError(msg, option="examples_for_task", value=examples)
    return tuple(dict(example) for example in examples)


def fill_instructions(examples: Sequence[Mapping[str, str]], default_instruct: str | None) -> tuple[ICLExample, ...]:
    """Checked examples (:func:`check_examples`), each with its ``instruct``: its own, else ``default_instruct``
    (the query instruction).

    Raises:
        ValueError: An example has no instruction at all.
    """
    filled: list[ICLExample] = []
    for i, example in enumerate(examples):
        instruct = example.get("instruct", default_instruct)
        if instruct is None:
            msg = (
                f"examples_for_task[{i}] has no 'instruct' and query_instruction_for_retrieval is None; "
                "set one of them (FlagEmbedding would silently write the text 'None' here)"
            )
            raise OptionValueError(msg, option="examples_for_task", value=list(examples))
        filled.append({"instruct": instruct, "query": example["query"], "response": example["response"]})
    return tuple(filled)


def build_prefix(examples: Sequence[ICLExample], template: str) -> str:
    """Join formatted examples with blank lines, plus a trailing blank line; '' when there are none.

    Example:
        >>> build_prefix([{"instruct": "t", "query": "q", "response": "r"}], "<instruct>{}\\n<query>{}\\n<response>{}")
        '<instruct>t\\n<query>q\\n<response>r\\n\\n'
    """
    if not examples:
        return ""
    blocks = [template.format(e["instruct"], e["query"], e["response"]) for e in examples]
    return EXAMPLE_SEPARATOR.join(blocks) + EXAMPLE_SEPARATOR


def format_query(query: str, instruction: str | None, template: str) -> str:
    """Put ``query`` into ``template`` after ``instruction``; the query as is when there is no instruction.

    Braces inside ``query`` or ``instruction`` are kept literally: only the template is a template.
    """
    if instruction is None:
        return query
    return template.format(instruction, query)
