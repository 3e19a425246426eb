"""``python -m bge_icl``: the ``bge-icl`` command line."""

from bge_icl_cli.cli import main

raise SystemExit(main())
