"""What the command line reads and writes: UTF-8 text split into lines, JSON Lines, JSON, output paths.

Lines end at ``"\\n"`` (a ``"\\r"`` before it is dropped) and nowhere else. ``str.splitlines()`` also breaks at
form feed (pdftotext writes one at every page break), ``\\v``, ``\\x1c``-``\\x1e``, U+0085, U+2028 and U+2029, which
gave a file more rows than lines and shifted every later row against its id; files are decoded from bytes, so
Python's newline translation does not break at a lone ``"\\r"`` either. A UTF-8 byte-order mark is dropped from every
file read; a byte that is not UTF-8 is reported by file, line and column.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bge_icl.example_sets import decode_utf8
from bge_icl_cli.errors import CliError

OUTPUT_SUFFIXES = (".npy", ".jsonl")


def decode(data: bytes, where: str) -> str:
    """``data`` as UTF-8 text, a byte-order mark dropped (:func:`bge_icl.example_sets.decode_utf8`).

    Raises:
        CliError: A byte is not UTF-8; the message names ``where``, the line and the column.
    """
    try:
        return decode_utf8(data, where)
    except ValueError as e:
        raise CliError(str(e)) from None


def read_text(path_str: str) -> str:
    """The text of a file, or of standard input for ``-``: UTF-8, a BOM dropped, line ends as they are."""
    if path_str == "-":
        stdin: Any = sys.stdin
        raw = getattr(stdin, "buffer", None)
        return decode(raw.read(), "stdin") if raw is not None else str(stdin.read()).removeprefix("\ufeff")
    path = Path(path_str)
    if path.is_dir():
        raise CliError(f"input {path_str} is a directory, expected a file")
    if not path.is_file():
        raise CliError(f"input file {path_str} does not exist")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CliError(f"cannot read {path_str}: {e.strerror or e}") from e
    return decode(data, path_str)


def split_lines(text: str) -> list[str]:
    """The lines of ``text``: they end at ``"\\n"`` (a ``"\\r"`` before it is dropped) and nowhere else.

    Example:
        >>> split_lines("page one\\fpage two\\r\\nline two\\n")
        ['page one\\x0cpage two', 'line two']
    """
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final "\n" ends the last line; it does not start another
    return [line.removesuffix("\r") for line in lines]


def jsonl_records(text: str, source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for each non-blank line of JSON Lines ``text``.

    Control characters inside strings are accepted as they are (``strict=False``): a writer that leaves a form feed
    raw still gives one record per line.

    Raises:
        CliError: A line is not valid JSON, or not an object; the message names ``source`` and the line.
    """
    for number, line in enumerate(split_lines(text), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line, strict=False)
        except json.JSONDecodeError as e:
            raise CliError(f"{source} line {number} is not valid JSON: {e}") from e
        if not isinstance(record, dict):
            raise CliError(f"{source} line {number} is a JSON {type(record).__name__}, expected an object")
        yield number, record


def read_json(path: Path, what: str) -> Any:
    """The JSON value in ``path`` (UTF-8, a BOM dropped); ``what`` names the file in errors (``"examples file x"``).

    Raises:
        CliError: The file cannot be read, is not UTF-8 or is not valid JSON.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CliError(f"cannot read {what}: {e.strerror or e}") from e
    try:
        return json.loads(decode(data, what))
    except json.JSONDecodeError as e:
        raise CliError(f"{what} is not valid JSON: {e}") from e


def check_output(path_str: str) -> Path:
    """``-o``: a ``.npy`` or ``.jsonl`` file path in an existing folder, checked before any work.

    Raises:
        CliError: Another suffix, a directory, or a folder that does not exist.
    """
    path = Path(path_str)
    if path.suffix not in OUTPUT_SUFFIXES:
        raise CliError(f"output {path_str} must end in .npy (float32 matrix) or .jsonl (id + vector per line)")
    if path.is_dir():
        raise CliError(f"output {path_str} is a directory; give a file path ending in .npy or .jsonl")
    if not path.parent.is_dir():
        raise CliError(f"output folder {path.parent} does not exist")
    return path
