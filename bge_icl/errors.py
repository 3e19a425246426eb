"""The errors the core raises about its inputs, each with fields a caller can act on.

The command line, the HTTP server and the adapters format their own words from these fields (the option's
name, the bad value, the item's index); none of them parses a message. The messages stay as before for people
reading a traceback, and every class keeps the builtin base (``TypeError`` / ``ValueError``) that callers
already catch.

- :class:`OptionError` (``OptionTypeError``, ``OptionValueError``): an option or per-call argument is unknown
  or has a bad value; ``.option`` names it (``"batch_size"``), ``.value`` is what was given.
- :class:`InputError` (``InputTypeError``, ``InputValueError``): one text of a call is not a valid ``str``;
  ``.index`` is its 0-based position in the call (None when the container itself is wrong).

Truncation has its own pair in :mod:`bge_icl.truncation` (``TruncationWarning`` / ``TruncationError``).
"""

from __future__ import annotations

from typing import Any, TypeVar

_E = TypeVar("_E", bound=BaseException)


def _restore(cls: type[_E], message: str, fields: dict[str, Any]) -> _E:
    """Rebuild an error with keyword-only fields (for pickling across processes, and ``copy``)."""
    error = cls.__new__(cls)
    BaseException.__init__(error, message)
    error.__dict__.update(fields)
    return error


def in_context(error: _E, where: str) -> _E:
    """A copy of ``error`` whose message starts with ``where`` (``"task 'SciFact': ..."``), fields kept."""
    fields: dict[str, Any] = dict(error.__dict__) if isinstance(error, FieldsPickle) else {}
    return _restore(type(error), f"{where}: {error}", fields)


class FieldsPickle:
    """Pickles an exception whose ``__init__`` takes keyword-only fields: the message plus ``__dict__``."""

    def __reduce__(self) -> tuple[Any, ...]:
        assert isinstance(self, BaseException)
        return (_restore, (type(self), str(self), dict(self.__dict__)))


class OptionError(FieldsPickle, Exception):
    """An option (or a per-call argument of ``encode_*``) is unknown or has a bad value.

    Attributes:
        option: The option's name as the core spells it (``"query_max_length"``, ``"devices"``, ``"precision"``).
        value: The value given (None for an unknown name).
        rule: Which rule the value broke, where one option has several: ``"positive"`` (not a positive int),
            ``"room"`` (a length limit that leaves no room for text); None otherwise.
    """

    def __init__(self, message: str, *, option: str, value: Any = None, rule: str | None = None) -> None:
        super().__init__(message)
        self.option = option
        self.value = value
        self.rule = rule


class OptionTypeError(OptionError, TypeError):
    """An unknown option, or a value of the wrong type."""


class OptionValueError(OptionError, ValueError):
    """A value of the right type but out of range, or not one of the valid choices."""


class InputError(FieldsPickle, Exception):
    """One text given to ``encode_*`` (or an adapter) is not a valid ``str``.

    Attributes:
        index: The text's 0-based position in the call's list (None: the call's argument itself is wrong,
            e.g. a dict instead of a list).
    """

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class InputTypeError(InputError, TypeError):
    """A text is not a ``str`` (or the texts are not a list of them)."""


class InputValueError(InputError, ValueError):
    """A text is a ``str`` but not valid Unicode (a lone surrogate)."""
