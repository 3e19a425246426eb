"""``python -m bge_icl``: the ``bge-icl`` command line."""

from bge_icl.cli import main

raise SystemExit(main())
