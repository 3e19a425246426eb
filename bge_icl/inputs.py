"""Validation of the texts passed to ``encode_*`` and to the LangChain / LlamaIndex adapters."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from bge_icl.errors import InputTypeError, InputValueError


def _check_item(label: str, item: object, index: int | None = None) -> None:
    """Raise unless ``item`` is a ``str`` that is valid Unicode; ``label`` names it in the message, ``index`` in
    the error's field."""
    if not isinstance(item, str):
        msg = f"{label} is {type(item).__name__}, expected str"
        raise InputTypeError(msg, index=index)
    try:
        item.encode("utf-8")
    except UnicodeEncodeError as e:
        msg = (
            f"{label} is not valid Unicode: {e.reason} at position {e.start} ({item[e.start : e.end]!r}); "
            "decode your input with errors='replace' or drop lone surrogates"
        )
        raise InputValueError(msg, index=index) from None


def as_text_list(texts: str | Iterable[str]) -> tuple[list[str], bool]:
    """Return ``(list_of_texts, was_single_string)`` after checking every item.

    Accepts one ``str`` or any iterable of ``str`` (list, tuple, other sequences, generators; a
    generator is consumed once).

    Raises:
        TypeError: ``texts`` is bytes, a mapping or not iterable, or an item is not a ``str``;
            the message names the item's index and type.
        ValueError: An item is not valid Unicode (a lone surrogate); the message names the index.

    Example:
        >>> as_text_list("hi")
        (['hi'], True)
    """
    if isinstance(texts, str):
        items, single = [texts], True
    elif isinstance(texts, (bytes, bytearray, Mapping)) or not isinstance(texts, Iterable):
        msg = f"texts must be a str or a list of str, got {type(texts).__name__}"
        raise InputTypeError(msg)
    else:
        items, single = list(texts), False
    for i, item in enumerate(items):
        _check_item(f"item {i}", item, i)
    return items, single


def as_text_batch(texts: Iterable[str], name: str = "texts") -> list[str]:
    """Check the text list of an adapter's batch method (``embed_documents``, ``get_text_embedding_batch``).

    Like :func:`as_text_list`, but a single ``str`` is an error: iterating it would embed each character.

    Raises:
        TypeError: ``texts`` is a str, bytes, a mapping or not iterable, or an item is not a ``str``
            (the message names the item's index, counted over the whole list, and its type).
        ValueError: An item is not valid Unicode (a lone surrogate).

    Example:
        >>> as_text_batch(("a", "b"))
        ['a', 'b']
    """
    if isinstance(texts, (str, bytes, bytearray, Mapping)) or not isinstance(texts, Iterable):
        hint = "; wrap one text in a list: [text]" if isinstance(texts, str) else ""
        msg = f"{name} must be a list of str, got {type(texts).__name__}{hint}"
        raise InputTypeError(msg)
    return as_text_list(texts)[0]


def as_one_text(text: str, name: str = "text") -> str:
    """Check the text of an adapter's single-text method (``embed_query``, ``get_query_embedding``, ...).

    Raises:
        TypeError: ``text`` is not a ``str`` (e.g. ``"query is NoneType, expected str"``).
        ValueError: ``text`` is not valid Unicode (a lone surrogate).

    Example:
        >>> as_one_text("hi", "query")
        'hi'
    """
    _check_item(name, text)
    return text
