"""``python -m bge_icl_cli``: the ``bge-icl`` command line."""

from bge_icl_cli.cli import entry

entry()
