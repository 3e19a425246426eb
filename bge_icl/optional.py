"""Optional libraries: import one when it is first needed, or say which bge-icl extra installs it.

One wording for every place that needs a library an extra brings (``pytrec_eval`` for metrics, ``httpx`` for an
endpoint, sentence-transformers for a compact precision, a framework for its adapter package).

Example:
    >>> pytrec_eval = optional_import("pytrec_eval", extra="eval", needed_by="retrieval metrics")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from types import ModuleType


def install_hint(extra: str) -> str:
    """The command that installs bge-icl with ``extra`` (``"eval"``, or several: ``"ray,serve"``)."""
    return f"pip install 'bge-icl[{extra}]'"


def missing_extra(module: str, extra: str, needed_by: str, cause: ImportError) -> ImportError:
    """The ImportError for ``module`` failing to import (``cause``): what needs it, why, and the extra to install.

    For a package's own guard around its framework imports (``except ImportError as e: raise missing_extra(...)
    from e``), which keeps real import statements for type checkers; elsewhere use :func:`optional_import`.
    """
    msg = f"{needed_by} needs {module}, which could not be imported ({cause}); install it with: {install_hint(extra)}"
    return ImportError(msg, name=module)


def optional_import(module: str, extra: str, needed_by: str) -> ModuleType:
    """Import ``module``, or raise an ImportError naming the extra that installs it.

    Args:
        module: The module's dotted name, as a constant string (the architecture test reads these calls as imports).
        extra: The bge-icl extra that brings it (``"eval"``: ``pip install 'bge-icl[eval]'``).
        needed_by: What needs it, the message's subject (``"retrieval metrics"``).

    Returns:
        The imported module.

    Raises:
        ImportError: ``module`` cannot be imported; the message names ``needed_by``, the cause and the extra.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise missing_extra(module, extra, needed_by, e) from e
