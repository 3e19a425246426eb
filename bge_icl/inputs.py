"""Validation of the texts passed to ``encode_*``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


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
        raise TypeError(msg)
    else:
        items, single = list(texts), False
    for i, item in enumerate(items):
        if not isinstance(item, str):
            msg = f"item {i} is {type(item).__name__}, expected str"
            raise TypeError(msg)
        try:
            item.encode("utf-8")
        except UnicodeEncodeError as e:
            msg = (
                f"item {i} is not valid Unicode: {e.reason} at position {e.start} ({item[e.start : e.end]!r}); "
                "decode your input with errors='replace' or drop lone surrogates"
            )
            raise ValueError(msg) from None
    return items, single
