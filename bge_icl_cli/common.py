"""What the ``bge-icl`` subcommands share: errors and exit codes, the model and prompt options, examples, files.

:mod:`bge_icl_cli.cli` (demo, embed, search, the parser) and :mod:`bge_icl_cli.evaluate` both import this module,
so neither imports the other. torch and the encoder load only inside :func:`load_embedder`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.resources
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bge_icl.prompts import WEB_SEARCH_INSTRUCTION, ICLExample, validate_examples

if TYPE_CHECKING:
    from bge_icl.encoder import ICLEmbedder

DEFAULT_MODEL = "BAAI/bge-en-icl"
EXIT_OK, EXIT_USAGE, EXIT_MODEL, EXIT_INTERRUPTED = 0, 1, 2, 130

# Python parameter names in core messages -> the CLI option a user types.
CLI_NAMES = {
    "query_max_length": "--max-length",
    "passage_max_length": "--max-length",
    "max_length": "--max-length",
    "batch_size": "--batch-size",
    "devices": "--devices",
    "dtype": "--dtype",
    "model_name": "--model",
    "examples_for_task": "--examples",
    "query_instruction_for_retrieval": "--instruction",
    "calibration": "--calibration",
    "precision": "--precision",
}


class CliError(Exception):
    """A user-facing error: one line for stderr and the exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def data_file(*parts: str) -> Any:
    return importlib.resources.files("bge_icl").joinpath("data", *parts)


def bundled_example_sets() -> list[str]:
    """Names of the example sets shipped with the package (``bge_icl/data/examples/*.json``)."""
    folder = data_file("examples")
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def load_examples(spec: str | None, default_instruct: str | None = WEB_SEARCH_INSTRUCTION) -> list[ICLExample] | None:
    """``--examples``: a JSON file (a list of ``{instruct?, query, response}``) or a bundled set's name.

    Raises:
        CliError: The file is missing or not valid JSON, the examples are malformed, or the name is unknown.
    """
    if spec is None:
        return None
    path = Path(spec).expanduser()
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise CliError(f"cannot read examples file {spec}: {e}") from e
        except json.JSONDecodeError as e:
            raise CliError(f"examples file {spec} is not valid JSON: {e}") from e
        source = f"examples file {spec}"
    elif spec in bundled_example_sets():
        data = json.loads(data_file("examples", f"{spec}.json").read_text(encoding="utf-8"))
        source = f"example set {spec!r}"
    elif spec.endswith(".json") or "/" in spec or path.suffix:
        raise CliError(f"examples file {spec} does not exist")
    else:
        names = ", ".join(bundled_example_sets())
        raise CliError(f"unknown example set {spec!r}: bundled sets are {names}; or pass a JSON file path")
    try:
        return list(validate_examples(data, default_instruct))
    except (TypeError, ValueError) as e:
        hint = 'expected a JSON list of {"instruct", "query", "response"} objects'
        raise CliError(f"{source}: {e}; {hint}") from e


def read_text(path_str: str) -> str:
    """The text of a file (a UTF-8 BOM dropped), or of standard input for ``-``."""
    if path_str == "-":
        return sys.stdin.read().removeprefix("\ufeff")
    path = Path(path_str)
    if path.is_dir():
        raise CliError(f"input {path_str} is a directory, expected a file")
    if not path.is_file():
        raise CliError(f"input file {path_str} does not exist")
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise CliError(f"cannot read {path_str}: {e}") from e


def _devices(value: str | None) -> str | int | None:
    return int(value) if value is not None and value.isdigit() else value


def cli_words(message: str) -> str:
    """A core message in the CLI's words: one line, option names as typed (``devices='cpu'`` -> ``--devices cpu``).

    Example:
        >>> cli_words("batch_size must be a positive int, got 0; use devices='cpu'")
        '--batch-size must be a positive int, got 0; use --devices cpu'
    """
    names = "|".join(sorted(CLI_NAMES, key=len, reverse=True))
    quoted = rf"(?<![\w.-])({names})='([^']*)'(?=[;,)\s]|$)"
    message = re.sub(quoted, lambda m: f"{CLI_NAMES[m.group(1)]} {m.group(2)}", message)
    message = re.sub(rf"(?<![\w.-])({names})\b", lambda m: CLI_NAMES[m.group(1)], message)
    return " ".join(message.split())


def load_embedder(args: argparse.Namespace, **options: Any) -> ICLEmbedder:
    """Build the ``ICLEmbedder``; a model that cannot be loaded is exit 2, bad options exit 1."""
    from bge_icl.encoder import ICLEmbedder

    if args.quiet:
        options["show_progress"] = False  # no loading bar, no encoding bar
    try:
        return ICLEmbedder(args.model, devices=_devices(args.devices), dtype=args.dtype, **options)
    except OSError as e:
        one_line = " ".join(str(e).split())
        raise CliError(f"{one_line} Or pass --model PATH to a local checkpoint directory.", EXIT_MODEL) from e
    except (TypeError, ValueError) as e:
        errors = getattr(e, "errors", None)  # a pydantic ValidationError: its messages without the frame
        text = "; ".join(str(x["msg"]).removeprefix("Value error, ") for x in errors()) if errors else str(e)
        raise CliError(cli_words(text)) from e


def require(module: str, what: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise CliError(f"{what} needs {module.split('.')[0]}: pip install 'bge-icl[{extra}]'") from e


def model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"hub id or local checkpoint directory (default {DEFAULT_MODEL})"
    )
    p.add_argument("--devices", default=None, help="cpu, cuda:0 or a GPU index (default: first GPU, else CPU)")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on GPU, fp32 on CPU), float16, bfloat16, float32")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars (model loading included)")


def prompt_options(p: argparse.ArgumentParser) -> None:
    names = ", ".join(bundled_example_sets())
    p.add_argument(
        "--examples", default=None, help=f"few-shot examples: a JSON file or a bundled set ({names}); default zero-shot"
    )
    p.add_argument("--instruction", default=WEB_SEARCH_INSTRUCTION, help="task instruction put before each query")


def jsonl_records(text: str, source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for each non-blank line of JSON Lines ``text``.

    Raises:
        CliError: A line is not valid JSON, or not an object; the message names ``source`` and the line.
    """
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CliError(f"{source} line {number} is not valid JSON: {e}") from e
        if not isinstance(record, dict):
            raise CliError(f"{source} line {number} is a JSON {type(record).__name__}, expected an object")
        yield number, record
