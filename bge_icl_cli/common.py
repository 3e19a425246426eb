"""What the ``bge-icl`` subcommands share: the model, prompt and batching options, examples, loading the model.

:mod:`bge_icl_cli.cli` (demo, embed, search, the parser) and :mod:`bge_icl_cli.evaluate` both import this module,
so neither imports the other. Errors and exit codes are in :mod:`bge_icl_cli.errors`, files in
:mod:`bge_icl_cli.files`, the words for the core's errors and warnings in :mod:`bge_icl_cli.diagnostics`. torch and
the encoder load only inside :func:`load_embedder`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bge_icl.prompts import WEB_SEARCH_INSTRUCTION, ICLExample, validate_examples
from bge_icl.quickstart import DEFAULT_MODEL, bundled_example_sets, bundled_examples
from bge_icl_cli.diagnostics import one_line, option_words
from bge_icl_cli.errors import EXIT_MODEL, CliError
from bge_icl_cli.files import read_json

if TYPE_CHECKING:
    from bge_icl.encoder import ICLEmbedder

DEFAULT_BATCH_SIZE = 32


def data_file(*parts: str) -> Any:
    return importlib.resources.files("bge_icl").joinpath("data", *parts)


def load_examples(spec: str | None, default_instruct: str | None = WEB_SEARCH_INSTRUCTION) -> list[ICLExample] | None:
    """``--examples``: a JSON file (a list of ``{instruct?, query, response}``, UTF-8, a BOM dropped) or a bundled
    set's name.

    Raises:
        CliError: The file is missing, not UTF-8 or not valid JSON, the examples are malformed, or the name is
            unknown.
    """
    if spec is None:
        return None
    path = Path(spec).expanduser()
    if path.is_file():
        source = f"examples file {spec}"
        data = read_json(path, source)
    elif spec in bundled_example_sets():
        data = bundled_examples(spec)
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


def devices_arg(value: str | None) -> str | int | None:
    """``--devices`` as the ``devices`` option: a GPU index as an int, a name as it is."""
    return int(value) if value is not None and value.isdigit() else value


def load_embedder(args: argparse.Namespace, **options: Any) -> ICLEmbedder:
    """Build the ``ICLEmbedder``; a model that cannot be loaded is exit 2, bad options exit 1.

    An option error is worded from its fields with the subcommand's flags (``args.flags``, see
    :mod:`bge_icl_cli.diagnostics`).
    """
    from bge_icl.encoder import ICLEmbedder
    from bge_icl.errors import OptionError

    if args.quiet:
        options["show_progress"] = False  # no loading bar, no encoding bar
    try:
        return ICLEmbedder(args.model, devices=devices_arg(args.devices), dtype=args.dtype, **options)
    except OptionError as e:
        raise CliError(option_words(e, args.flags)) from e
    except OSError as e:
        raise CliError(f"{one_line(str(e))} Or pass --model PATH to a local checkpoint directory.", EXIT_MODEL) from e
    except (TypeError, ValueError) as e:  # without fields (a model's own config, say): the message as it is
        raise CliError(one_line(str(e))) from e


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
    p.add_argument("--dtype", default="auto",
                   help="auto (fp16 on GPU; bf16 on a CPU with bf16 units, else fp32), float16, bfloat16, float32")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars (model loading included)")


def batching_options(p: argparse.ArgumentParser, *, per_kind: bool) -> None:
    """``--batch-size`` and the token limits: one ``--max-length`` (embed), or one per kind (evaluate)."""
    if per_kind:
        p.add_argument("--query-max-length", type=int, default=None, help="query token limit (default 512)")
        p.add_argument("--passage-max-length", type=int, default=None, help="passage token limit (default 512)")
    else:
        p.add_argument(
            "--max-length", type=int, default=None, help="token limit (query_/passage_max_length, default 512)"
        )
    p.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="most texts per forward pass (default 32)"
    )


def prompt_options(p: argparse.ArgumentParser) -> None:
    names = ", ".join(bundled_example_sets())
    p.add_argument(
        "--examples", default=None, help=f"few-shot examples: a JSON file or a bundled set ({names}); default zero-shot"
    )
    p.add_argument("--instruction", default=WEB_SEARCH_INSTRUCTION, help="task instruction put before each query")
