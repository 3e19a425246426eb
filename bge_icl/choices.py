"""The closed choices of bge-icl's options, named once, and their checks; without torch or numpy.

:mod:`bge_icl.options` validates with these checks, :mod:`bge_icl.loading` and :mod:`bge_icl.forward` resolve the
checked values to what runs, and the command line and the server offer the same lists (``choices=``, help texts)
without importing torch (as vLLM keeps its enums in the config and the implementation in the pooler). The other
torch-free vocabularies are :mod:`bge_icl.kinds` (``"queries"`` / ``"passages"``) and
:data:`bge_icl.truncation.ON_TRUNCATION`.

A ``torch.dtype`` or ``torch.device`` is recognised only when torch is already imported (a value cannot be one
otherwise), so checking never imports it.
"""

from __future__ import annotations

import enum
import numbers
import sys
from typing import Literal, cast

from bge_icl.errors import OptionTypeError, OptionValueError


class PrefixAttention(str, enum.Enum):
    """How cached queries attend to the few-shot prefix (the ``prefix_attention`` option)."""

    AUTO = "auto"
    """``shared`` where the model has the Llama/Mistral layout, else ``copy``."""
    SHARED = "shared"
    """One shared copy of the prefix, cascade attention with the device's best kernel (fused on the CPU)."""
    SHARED_EXPLICIT = "shared-explicit"
    """One shared copy, cascade attention with the explicit float32 kernel (the GPU kernel; for comparisons)."""
    COPY = "copy"
    """The prefix's keys/values copied to every row of the batch (any model; for comparisons)."""


PREFIX_ATTENTION: tuple[str, ...] = tuple(p.value for p in PrefixAttention)

DTYPE_SPELLINGS: dict[str, str] = {
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
}
"""Every accepted dtype name -> its canonical name (the ``torch`` attribute)."""
DTYPES: tuple[str, ...] = ("float16", "bfloat16", "float32")
"""The canonical dtype names; ``"auto"`` is decided at load (:func:`bge_icl.loading.resolve_dtype`)."""

ATTENTION_IMPLEMENTATIONS: tuple[str, ...] = ("sdpa", "eager", "flash_attention_2")
"""transformers' attention implementations bge-icl loads with; None picks one at load."""

Precision = Literal["float32", "int8", "uint8", "binary", "ubinary"]
PRECISIONS: tuple[Precision, ...] = ("float32", "int8", "uint8", "binary", "ubinary")
"""Output precisions of a call (:mod:`bge_icl.precision`)."""
DEFAULT_PRECISION: Precision = "float32"
"""The precision of a call that names none."""


def _instance_of(value: object, module: str, name: str) -> bool:
    """Whether ``value`` is a ``module.name`` (``torch.dtype``, ``numpy.bool_``), without importing ``module``."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(value, getattr(loaded, name))


def is_bool(value: object) -> bool:
    """Whether ``value`` is a bool, numpy's included."""
    return isinstance(value, bool) or _instance_of(value, "numpy", "bool_")


def check_choice(option: str, value: object, valid: tuple[str, ...]) -> str:
    """``value`` when it is one of ``valid``, the one check of every closed choice.

    Raises:
        OptionValueError: Another value (``.option`` is ``option``); the message lists the valid ones.

    Example:
        >>> check_choice("prefix_attention", "copy", PREFIX_ATTENTION)
        'copy'
    """
    if value not in valid:
        msg = f"{option}={value!r} is not supported; valid: {valid}"
        raise OptionValueError(msg, option=option, value=value)
    return valid[valid.index(value)]  # the valid spelling it equals


def check_prefix_attention(value: object) -> str:
    """``value`` when it is one of :data:`PREFIX_ATTENTION` (:func:`check_choice`)."""
    return check_choice("prefix_attention", value, PREFIX_ATTENTION)


def check_dtype(value: object) -> str:
    """The canonical name of a dtype spelling (``"fp16"`` -> ``"float16"``) or ``torch.dtype``; ``"auto"`` as is.

    Raises:
        OptionValueError: An unknown name, or a torch dtype that is not a float16/bfloat16/float32.

    Example:
        >>> check_dtype("bf16"), check_dtype("auto")
        ('bfloat16', 'auto')
    """
    if _instance_of(value, "torch", "dtype"):
        name = str(value).removeprefix("torch.")
        if name not in DTYPES:
            msg = f"dtype={value} is not supported; valid: 'auto', {', '.join(repr(d) for d in DTYPES)}"
            raise OptionValueError(msg, option="dtype", value=value)
        return name
    if value == "auto":
        return "auto"
    if isinstance(value, str) and value in DTYPE_SPELLINGS:
        return DTYPE_SPELLINGS[value]
    valid = ", ".join(repr(k) for k in DTYPE_SPELLINGS)
    msg = f"dtype={value!r} is not supported; valid: 'auto', {valid} or a torch.dtype"
    raise OptionValueError(msg, option="dtype", value=value)


def check_attention(value: object) -> str | None:
    """``value`` when it is None (decided at load) or one of :data:`ATTENTION_IMPLEMENTATIONS`.

    Raises:
        OptionValueError: Another value; the message lists the valid ones.
    """
    return None if value is None else check_choice("attn_implementation", value, ATTENTION_IMPLEMENTATIONS)


def check_precision(precision: object) -> Precision:
    """``precision`` when it is one of :data:`PRECISIONS`.

    Raises:
        OptionValueError: Another value; the message lists the valid ones.
    """
    return cast(Precision, check_choice("precision", precision, PRECISIONS))


def _device_entry(entry: object) -> str | int:
    if _instance_of(entry, "torch", "device"):
        return str(entry)
    if isinstance(entry, str):
        return entry
    if is_bool(entry) or not isinstance(entry, numbers.Integral):
        kind = type(entry).__name__
        msg = f"devices entry {entry!r} is {kind}; expected a str like 'cpu'/'cuda:0' or an int GPU index"
        raise OptionTypeError(msg, option="devices", value=entry)
    return int(entry)


def check_devices(devices: object) -> str | int | tuple[str | int, ...] | None:
    """``devices`` in the option's form (a str, an int, a tuple of them, or None), without looking at the hardware.

    The one check of a ``devices`` value's type and shape: the option validates with it, and
    :func:`bge_icl.loading.resolve_devices` starts with it. A ``torch.device`` becomes its string, numpy ints
    ``int``, a list a tuple.

    Raises:
        OptionTypeError: A bool, or an entry that is not a str, int or ``torch.device``.
        OptionValueError: An empty list.
    """
    if devices is None or isinstance(devices, str):
        return devices
    if is_bool(devices):
        msg = f"devices={devices!r} is not a device; use a str like 'cpu' or 'cuda:0', an int GPU index, or a list"
        raise OptionTypeError(msg, option="devices", value=devices)
    if isinstance(devices, (list, tuple)):
        if not devices:
            msg = "devices=[] names no device; use None (auto), 'cpu', 'cuda:0', 0, or a list of them"
            raise OptionValueError(msg, option="devices", value=devices)
        return tuple(_device_entry(entry) for entry in devices)
    return _device_entry(devices)
