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
from typing import TYPE_CHECKING, Any

from bge_icl.choices import DTYPES
from bge_icl.errors import OptionError
from bge_icl.example_sets import SHAPE_HINT, load_example_set
from bge_icl.prompts import WEB_SEARCH_INSTRUCTION, ICLExample, fill_instructions
from bge_icl.quickstart import bundled_example_sets
from bge_icl_cli.diagnostics import one_line, option_words
from bge_icl_cli.errors import EXIT_MODEL, CliError

if TYPE_CHECKING:
    from bge_icl.encoder import ICLEmbedder


def data_file(*parts: str) -> Any:
    return importlib.resources.files("bge_icl").joinpath("data", *parts)


def load_examples(spec: str | None, default_instruct: str | None = WEB_SEARCH_INSTRUCTION) -> list[ICLExample] | None:
    """``--examples``: a JSON file (a list of ``{instruct?, query, response}``, UTF-8, a BOM dropped) or a bundled
    set's name (:func:`bge_icl.example_sets.load_example_set`, the core's one loader), each with its instruction.

    Raises:
        CliError: The file is missing, not UTF-8 or not valid JSON, the examples are malformed, or the name is
            unknown.
    """
    if spec is None:
        return None
    try:
        loaded = load_example_set(spec)
    except OptionError as e:
        hint = "" if isinstance(e.value, str) else f"; {SHAPE_HINT}"  # a bad file or name, else bad examples
        raise CliError(f"{e}{hint}") from e
    try:
        return list(fill_instructions(loaded.examples, default_instruct))
    except OptionError as e:
        raise CliError(f"{loaded.source}: {e}; {SHAPE_HINT}") from e


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
    """``--model``, ``--devices``, ``--dtype`` (the core's options, with its defaults) and ``--quiet``."""
    from bge_icl.options import declared  # pydantic: once main() runs, so that Ctrl-C while importing exits 130

    model, dtype = declared("model_name"), declared("dtype")
    p.add_argument("--model", default=model.default,
                   help=f"hub id or local checkpoint directory (default {model.default})")  # fmt: skip
    p.add_argument("--devices", default=None, help="cpu, cuda:0 or a GPU index (default: first GPU, else CPU)")
    p.add_argument("--dtype", default=dtype.default, help=f"{', '.join(('auto', *DTYPES))}; {dtype.help}")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars (model loading included)")


def batching_options(p: argparse.ArgumentParser, *, per_kind: bool) -> None:
    """``--batch-size`` and the token limits: one ``--max-length`` (embed), or one per kind (evaluate).

    Each defaults to None: the core's option decides (:func:`bge_icl.options.declared`).
    """
    from bge_icl.options import declared

    query, passage = declared("query_max_length"), declared("passage_max_length")
    if per_kind:
        p.add_argument("--query-max-length", type=int, default=None,
                       help=f"query token limit (default {query.default})")  # fmt: skip
        p.add_argument("--passage-max-length", type=int, default=None,
                       help=f"passage token limit (default {passage.default})")  # fmt: skip
    else:
        p.add_argument("--max-length", type=int, default=None,
                       help=f"token limit (query_max_length {query.default} / passage_max_length {passage.default} "
                            "by default)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=None, help=declared("batch_size").help)


def prompt_options(p: argparse.ArgumentParser) -> None:
    names = ", ".join(bundled_example_sets())
    p.add_argument(
        "--examples", default=None, help=f"few-shot examples: a JSON file or a bundled set ({names}); default zero-shot"
    )
    p.add_argument("--instruction", default=WEB_SEARCH_INSTRUCTION, help="task instruction put before each query")
