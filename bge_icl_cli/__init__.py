"""The ``bge-icl`` command line: ``bge-icl demo | embed | search`` (also ``python -m bge_icl_cli``).

It sits above the libraries: it uses the core (:mod:`bge_icl`) and, in ``demo``, both adapters.
"""

from __future__ import annotations
