"""``python -m bge_icl_cli``: the ``bge-icl`` command line."""

try:
    from bge_icl_cli.cli import entry
except KeyboardInterrupt:  # Ctrl-C while the imports run, before entry() handles it: the same quiet exit
    raise SystemExit(130) from None

entry()
