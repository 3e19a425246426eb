"""The two kinds of text, spelled one way in the core: ``"queries"`` and ``"passages"``.

Queries get the few-shot prefix, the instruction and the suffix; passages are embedded as they are. The edges
speak their clients' words (the command line's ``--kind query|corpus``, NVIDIA NIM's ``input_type``
``query|passage|document``, sentence-transformers' ``encode_query`` / ``encode_document``) and turn them into
:data:`Kind` with :func:`kind_of`; inside the core only :data:`KINDS` is accepted (:func:`check_kind`).
"""

from __future__ import annotations

from typing import Literal, cast

from bge_icl.choices import check_choice
from bge_icl.errors import OptionValueError

Kind = Literal["queries", "passages"]
KINDS: tuple[Kind, ...] = ("queries", "passages")
SPELLINGS: dict[str, Kind] = {
    "queries": "queries",
    "query": "queries",
    "passages": "passages",
    "passage": "passages",
    "corpus": "passages",
    "document": "passages",
    "documents": "passages",
}
"""The words the edges accept for each kind (the CLI, the server, the adapters' frameworks)."""


def check_kind(kind: object) -> Kind:
    """``kind`` when it is one of :data:`KINDS`.

    Raises:
        OptionValueError: Another value (``.option == "kind"``); the message lists the valid ones.

    Example:
        >>> check_kind("passages")
        'passages'
    """
    return cast(Kind, check_choice("kind", kind, KINDS))


def kind_of(spelling: object) -> Kind:
    """The :data:`Kind` an edge's word names (``"query"``, ``"document"``, ``"corpus"``, ...), case-insensitively.

    Raises:
        OptionValueError: A word that names no kind; the message lists the accepted ones.

    Example:
        >>> kind_of("Document"), kind_of("query")
        ('passages', 'queries')
    """
    kind = SPELLINGS.get(spelling.lower()) if isinstance(spelling, str) else None
    if kind is None:
        msg = f"kind={spelling!r} is not supported; valid: {tuple(SPELLINGS)}"
        raise OptionValueError(msg, option="kind", value=spelling)
    return kind
