"""The command line offers the core's choices and defaults, never a copy of its own: each flag that sets a core
option defaults to None (the core decides) or to the core's default, and a choice list is the core's own object."""

from __future__ import annotations

import argparse

from bge_icl.choices import DEFAULT_PRECISION, PRECISIONS
from bge_icl.options import EmbedderOptions, declared
from bge_icl_cli.cli import build_parser

# The command line's own defaults, on purpose: its queries are web searches (docs/cli.md).
OWN_DEFAULTS = {"query_instruction_for_retrieval"}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _options_of(action: argparse.Action, flags: dict[str, str]) -> list[str]:
    """The core options a flag sets: by the subcommand's flag map, else by the flag's own name."""
    by_map = [name for name, flag in flags.items() if flag in action.option_strings]
    by_name = [action.dest] if action.dest in EmbedderOptions.OPTION_NAMES else []
    return [name for name in dict.fromkeys(by_map + by_name) if name in EmbedderOptions.OPTION_NAMES]


def test_every_option_flag_defaults_to_none_or_the_cores_default() -> None:
    checked = 0
    for command, parser in _subcommands().items():
        flags = parser.get_default("flags") or {}
        for action in parser._actions:
            for name in _options_of(action, flags):
                if name in OWN_DEFAULTS:
                    continue
                assert action.default is None or action.default == declared(name).default, (command, name)
                checked += 1
    assert checked >= 10  # --model, --dtype, --batch-size, the limits, in each subcommand


def test_the_precision_flag_is_the_cores_list_and_default() -> None:
    embed = _subcommands()["embed"]
    precision = next(a for a in embed._actions if "--precision" in a.option_strings)
    assert precision.choices is PRECISIONS
    assert precision.default == DEFAULT_PRECISION


def test_no_other_flag_copies_a_core_choice_list() -> None:
    from bge_icl import choices

    core_lists = {name: value for name, value in vars(choices).items() if name.isupper() and isinstance(value, tuple)}
    for command, parser in _subcommands().items():
        for action in parser._actions:
            if action.choices is None or isinstance(action, argparse._SubParsersAction):
                continue
            for name, values in core_lists.items():
                same = set(action.choices) == set(values)
                assert not same or action.choices is values, (command, action.option_strings, name)
