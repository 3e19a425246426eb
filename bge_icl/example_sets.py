"""Example sets by name: the one loader of ``--examples`` values, for the command line and the server alike.

One precedence: a file that exists is read (a JSON list of ``{instruct?, query, response}``, UTF-8, a byte-order
mark dropped); otherwise the name of a bundled set (``bge_icl/data/examples/*.json``, e.g. ``web-search``). Errors
are :class:`~bge_icl.errors.OptionValueError` on ``examples_for_task`` whose message names the file or set.
"""

from __future__ import annotations

import codecs
import json
import os
from dataclasses import dataclass
from pathlib import Path

from bge_icl.errors import OptionValueError
from bge_icl.prompts import check_examples
from bge_icl.quickstart import bundled_example_sets, bundled_examples

SHAPE_HINT = 'expected a JSON list of {"instruct", "query", "response"} objects'


@dataclass(frozen=True)
class LoadedExamples:
    """An example set as read, its shape checked (the instruction rule is the embedder's).

    Attributes:
        examples: The examples, each ``{"instruct"?, "query", "response"}``.
        source: Where they came from, for messages: ``"examples file x.json"`` or ``"example set 'web-search'"``.
        bundled: A bundled set (it brings its own instruction) rather than a file.
        shared_instruct: The ``instruct`` every example has, when they all have the same one; else None.
    """

    examples: tuple[dict[str, str], ...]
    source: str
    bundled: bool
    shared_instruct: str | None


def decode_utf8(data: bytes, where: str) -> str:
    """``data`` as UTF-8 text, a byte-order mark dropped.

    Raises:
        ValueError: A byte is not UTF-8; the message names ``where``, the line and the column.
    """
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        line = data.count(b"\n", 0, e.start) + 1
        column = len(data[line_start : e.start].decode("utf-8", errors="replace")) + 1
        msg = f"{where} line {line} is not UTF-8: byte 0x{data[e.start]:02x} at column {column}; save it as UTF-8"
        raise ValueError(msg) from None


def load_example_set(spec: str) -> LoadedExamples:
    """The example set ``spec`` names: an existing JSON file first, else a bundled set's name.

    Raises:
        OptionValueError: The file is missing, unreadable, not UTF-8 or not JSON; the examples are malformed; or
            the name is unknown (the message lists the bundled sets).
    """
    path = Path(spec).expanduser()
    if path.is_file():
        source, data = f"examples file {spec}", _read_json(path, f"examples file {spec}")
    elif spec in bundled_example_sets():
        source, data = f"example set {spec!r}", bundled_examples(spec)
    else:
        named_a_file = bool(path.suffix) or "/" in spec or os.sep in spec
        names = ", ".join(bundled_example_sets())
        msg = (f"examples file {spec} does not exist" if named_a_file else
               f"unknown example set {spec!r}: bundled sets are {names}; or a JSON file")  # fmt: skip
        raise OptionValueError(msg, option="examples_for_task", value=spec)
    try:
        examples = check_examples(data)
    except (TypeError, ValueError) as e:  # the content of a file or set: a bad value of --examples
        msg = f"{source}: {e}"
        raise OptionValueError(msg, option="examples_for_task", value=data) from e
    instructs = {e.get("instruct") for e in examples}
    shared = next(iter(instructs)) if len(instructs) == 1 else None
    return LoadedExamples(examples, source, not path.is_file(), shared)


def _read_json(path: Path, what: str) -> object:
    try:
        text = decode_utf8(path.read_bytes(), what)
    except OSError as e:
        msg = f"cannot read {what}: {e.strerror or e}"
        raise OptionValueError(msg, option="examples_for_task", value=str(path)) from e
    except ValueError as e:
        raise OptionValueError(str(e), option="examples_for_task", value=str(path)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        msg = f"{what} is not valid JSON: {e}"
        raise OptionValueError(msg, option="examples_for_task", value=str(path)) from e
