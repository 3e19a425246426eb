"""The command line's words for the core's errors and warnings, built from their fields, never from their text.

The core raises :class:`~bge_icl.errors.OptionError` (``.option``, ``.value``) and warns with
:class:`~bge_icl.truncation.TruncationWarning` (``count``, ``total``, ``kind``, ``option``, ``limit``, ``indices``) and
:class:`~bge_icl.evaluation.UnjudgedQueriesWarning` (``query_ids``, ``count``, ``total``). Each subcommand maps the
core's option names to the flags it has (:data:`FLAGS`, :data:`EMBED_FLAGS`), so a message names ``--max-length``
where ``bge-icl embed`` has it and ``--passage-max-length`` where ``bge-icl evaluate`` has it.
``tests/test_architecture.py`` checks that no module here matches a pattern against a message.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import warnings

    from bge_icl.errors import OptionError
    from bge_icl.truncation import Truncation

Flags = Mapping[str, str]

# The core's option names -> the flag a user types, for the options every model-loading subcommand has.
MODEL_FLAGS: dict[str, str] = {
    "model_name": "--model",
    "devices": "--devices",
    "dtype": "--dtype",
    "examples_for_task": "--examples",
    "query_instruction_for_retrieval": "--instruction",
}
# bge-icl evaluate: both limits, each under its own name.
FLAGS: dict[str, str] = {
    **MODEL_FLAGS,
    "batch_size": "--batch-size",
    "query_max_length": "--query-max-length",
    "passage_max_length": "--passage-max-length",
}
# bge-icl embed: one limit, for the kind of text it embeds.
EMBED_FLAGS: dict[str, str] = {
    **FLAGS,
    "query_max_length": "--max-length",
    "passage_max_length": "--max-length",
    "max_length": "--max-length",
    "precision": "--precision",
    "calibration": "--calibration",
}


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) folded into one space."""
    return " ".join(text.split())


def option_words(error: OptionError, flags: Flags) -> str:
    """The command line's words for a core option error: the flag a user typed and its value.

    Example:
        >>> from bge_icl.errors import OptionValueError
        >>> option_words(OptionValueError("...", option="batch_size", value=0, rule="positive"), FLAGS)
        '--batch-size must be a positive int, got 0'
    """
    flag, value = flags.get(error.option), error.value
    if flag is None:  # an option this subcommand does not set: the core's own words
        return one_line(str(error))
    if error.rule == "positive":
        return f"{flag} must be a positive int, got {value}"
    if error.rule == "room":
        room = "the query" if error.option == "query_max_length" else "text next to the special tokens"
        return f"{flag}={value} leaves no room for {room} (BOS, EOS and the query suffix count); raise it"
    if error.option == "dtype":
        from bge_icl.choices import DTYPE_SPELLINGS

        return f"{flag} {value} is not supported; valid: {', '.join(repr(n) for n in ('auto', *DTYPE_SPELLINGS))}"
    if error.option == "devices":
        import torch

        here = ["cpu", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
        return f"{flag} {value} is not a device of this machine; valid: {', '.join(here)} (or a GPU index)"
    if error.option == "model_name":
        return f"{flag} must name a hub id or a local checkpoint directory, got {value!r}"
    return f"{flag}: {one_line(str(error))}"


def truncation_words(report: Truncation, flags: Flags, ids: Sequence[Any] | None = None) -> str:
    """A truncation report in the command line's words; ``ids`` name the texts (else their 0-based positions).

    Example:
        >>> from bge_icl.truncation import TruncationWarning
        >>> report = TruncationWarning("...", indices=[4], total=9, kind="passages", option="passage_max_length",
        ...                            limit=32)
        >>> truncation_words(report, EMBED_FLAGS, ids=range(1, 10))
        '1 of 9 passages exceeded --max-length=32 tokens and were truncated (first: id 5)'
    """
    flag = flags.get(report.option)
    limit = f"{flag}={report.limit}" if flag else str(report.limit)
    first = report.indices[0]
    where = f"id {ids[first]}" if ids is not None else f"item {first}"
    return f"{report.count} of {report.total} {report.kind} exceeded {limit} tokens and were truncated (first: {where})"


def report_warnings(caught: Sequence[warnings.WarningMessage], flags: Flags, ids: Sequence[Any] | None = None) -> int:
    """Print each warning of ``caught`` as one ``bge-icl: warning:`` line: truncation reports in the command line's
    words (:func:`truncation_words`), others as they are.

    :class:`~bge_icl.evaluation.UnjudgedQueriesWarning` is dropped: ``bge-icl evaluate`` says it before embedding.

    Returns:
        How many texts were truncated, over every report.
    """
    from bge_icl.evaluation import UnjudgedQueriesWarning
    from bge_icl.truncation import TruncationWarning

    truncated = 0
    for w in caught:
        if isinstance(w.message, TruncationWarning):
            truncated += w.message.count
            print(f"bge-icl: warning: {truncation_words(w.message, flags, ids)}", file=sys.stderr)
        elif not isinstance(w.message, UnjudgedQueriesWarning):
            print(f"bge-icl: warning: {one_line(str(w.message))}", file=sys.stderr)
    return truncated
