"""``EmbedderOptions``: every option of bge-icl, declared once, with its type, default, constraint and doc.

:class:`~bge_icl.ICLEmbedder` takes these options; the LangChain and LlamaIndex adapters inherit them
(through :class:`bge_icl.adapter.EmbedderModel`), so the three front doors accept and reject the same
names and values. Options are fixed once set: assigning one raises :class:`FrozenOptionError`, which
names the ways to get another configuration (``with_options(...)``, ``with_examples(...)``).

Accepted spellings are normalized when validated: a tuple or list of examples becomes a tuple of dicts,
numpy integers become ``int``, a ``torch.dtype`` becomes its name (``"float16"``), ``"fp16"`` becomes
``"float16"``, a ``torch.device`` becomes its string, a list of devices a tuple, paths ``str``.
"""

from __future__ import annotations

import difflib
import numbers
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypedDict

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from bge_icl.choices import (
    Precision,
    check_attention,
    check_devices,
    check_dtype,
    check_prefix_attention,
    is_bool,
)
from bge_icl.errors import OptionTypeError, OptionValueError
from bge_icl.prompts import (
    DEFAULT_EXAMPLES_INSTRUCTION_FORMAT,
    DEFAULT_QUERY_INSTRUCTION_FORMAT,
    DEFAULT_SUFFIX,
    check_examples,
    fill_instructions,
    validate_template,
)
from bge_icl.quickstart import DEFAULT_MODEL
from bge_icl.truncation import OnTruncation, check_mode

if TYPE_CHECKING:
    import numpy as np

MODEL_ALIASES = ("model_name", "model_name_or_path", "model")
"""The names the model option answers to: LangChain/LlamaIndex/Hugging Face (``model_name``), FlagEmbedding
(``model_name_or_path``) and ``HuggingFaceEmbeddings(model=...)``."""

NEAR_MISSES: dict[str, str] = {
    "device": "devices",
    "max_length": "passage_max_length or query_max_length",
    "max_seq_length": "passage_max_length or query_max_length",
    "instruction": "query_instruction_for_retrieval",
    "query_instruction": "query_instruction_for_retrieval",
    "examples": "examples_for_task",
    "normalize": "normalize_embeddings",
    "torch_dtype": "dtype",
    "model_id": "model_name",
    "model_path": "model_name",
    "cache_folder": "cache_dir",
    "model_kwargs": "devices=, dtype=, attn_implementation=, trust_remote_code=, revision= (options of their own)",
    "encode_kwargs": "normalize_embeddings=, batch_size= (options of their own)",
    "query_encode_kwargs": "query_instruction_for_retrieval=, examples_for_task= (options of their own)",
}


class CallOptions(TypedDict, total=False):
    """Per-call overrides of ``encode_queries`` / ``encode_corpus`` (besides FlagEmbedding's ``batch_size``,
    ``max_length`` and ``convert_to_numpy``).

    Attributes:
        show_progress: Override the embedder's ``show_progress`` for this call.
        on_truncation: Override the embedder's ``on_truncation`` for this call.
        precision: ``"float32"`` (the default), ``"int8"``, ``"uint8"``, ``"binary"`` or ``"ubinary"``
            (:mod:`bge_icl.precision`; needs ``bge-icl[sentence-transformers]``).
        calibration: int8/uint8 ranges, shape (2, dimension), from
            :func:`bge_icl.precision.calibration_ranges`; without it the call calibrates on its own vectors.
    """

    show_progress: bool | None
    on_truncation: OnTruncation | None
    precision: Precision | None
    calibration: np.ndarray | None


class FrozenOptionError(AttributeError):
    """An option was assigned after construction: the vectors were made with the old value."""


def _index(value: Any) -> int | None:
    """``value`` as an int when it is an integer (numpy ones included) and not a bool, else None."""
    if is_bool(value) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int when it is a positive integer (numpy ones too, not bools).

    Raises:
        ValueError: Anything else; the message names ``name`` and the value.
    """
    index = _index(value)
    if index is None or index <= 0:
        msg = f"{name} must be a positive int, got {value!r}"
        raise OptionValueError(msg, option=name, value=value, rule="positive")
    return index


def flag(name: str, value: Any, nullable: bool = False) -> bool:
    """``value`` as a bool when it is one (numpy's too).

    Raises:
        TypeError: Anything else; the message names ``name`` and the value.
    """
    if not is_bool(value):
        msg = f"{name} must be a bool{' or None' if nullable else ''}, got {value!r}"
        raise OptionTypeError(msg, option=name, value=value)
    return bool(value)


class EmbedderOptions(BaseModel):
    """The options of a bge-en-icl embedder. Validated on construction, fixed afterwards.

    Example:
        >>> opts = EmbedderOptions(model_name="BAAI/bge-en-icl", query_max_length=256, dtype=torch.float16)
        >>> opts.dtype, opts.query_max_length
        ('float16', 256)
        >>> EmbedderOptions(device="cpu")
        Traceback (most recent call last):
        ...
        TypeError: unknown option 'device' (did you mean devices?); valid options: ...
    """

    model_config = ConfigDict(
        use_attribute_docstrings=True,
        populate_by_name=True,
        protected_namespaces=(),
        arbitrary_types_allowed=True,
        validate_default=False,
    )
    OPTION_NAMES: ClassVar[tuple[str, ...]]

    model_name: str = Field(default=DEFAULT_MODEL, validation_alias=AliasChoices(*MODEL_ALIASES))
    """Hub id or local directory, loaded with ``from_pretrained`` (also ``model_name_or_path=`` or ``model=``)."""
    examples_for_task: tuple[dict[str, str], ...] | None = None
    """Few-shot examples put before every query, each ``{"instruct"?, "query", "response"}``; None = zero-shot."""
    query_instruction_for_retrieval: str | None = None
    """The task instruction put before each query (and examples without ``instruct``); None = the query as is."""
    query_instruction_format: str = DEFAULT_QUERY_INSTRUCTION_FORMAT
    """Query template with two ``{}``: instruction, query (a literal ``\\n`` means a newline)."""
    examples_instruction_format: str = DEFAULT_EXAMPLES_INSTRUCTION_FORMAT
    """Example template with three ``{}``: instruction, query, response."""
    suffix: str = DEFAULT_SUFFIX
    """Appended after each query, before EOS."""
    query_max_length: int = 512
    """Token limit for a query, not counting the examples prefix (FlagEmbedding's meaning); > 0."""
    passage_max_length: int = 512
    """Token limit for a passage, special tokens included; > 0."""
    normalize_embeddings: bool = True
    """L2-normalize the vectors (in float32), so inner product is cosine similarity."""
    devices: str | int | tuple[str | int, ...] | None = None
    """None = first CUDA GPU else CPU; ``0`` = ``cuda:0``; ``"cpu"``, ``"cuda:1"``; a list = one replica per
    entry, fed from one batch queue; ``"auto"`` = every visible GPU (the CPU when there is none)."""
    dtype: str = "auto"
    """``"auto"`` (float16 on GPU; on CPU bfloat16 where it has bf16 units, AMX-BF16 or AVX512-BF16, else float32;
    :class:`~bge_icl.FlagICLModel`: float32 on CPU), ``"float16"``, ``"bfloat16"``, ``"float32"``, or a torch.dtype."""
    batch_size: int | None = None
    """Most texts per forward pass; None = 32 on CPU (larger batches run slower there), and on GPU as many as
    ``max_batch_tokens`` allows (it counts the prefix attention of cached queries: hundreds of short queries); > 0."""
    max_batch_tokens: int | None = None
    """Most padded tokens per forward pass (a cached query counts its attention to the prefix too); it bounds how
    long one pass runs, so how long another call waits behind it. None = 4,096 on GPU, 512 on CPU; > 0."""
    batch_wait_ms: float = 0.0
    """How long a free replica may wait for more rows from other calls before a pass that fills less than half of
    the token budget and the row limit, in milliseconds; 0 = start at once (a call alone never waits); >= 0."""
    attn_implementation: str | None = None
    """``"sdpa"``, ``"eager"`` or ``"flash_attention_2"``; None = flash-attn 2 on GPU when installed, else sdpa."""
    prefix_cache: bool = True
    """Run the constant few-shot prefix once and reuse its keys/values for every query (same vectors, less compute)."""
    prefix_attention: str = "auto"
    """How cached queries attend to the prefix: ``"auto"`` (``"shared"`` for Llama/Mistral models, else ``"copy"``),
    ``"shared"`` (one copy of the prefix for the whole batch, the device's best kernel), ``"shared-explicit"`` (the
    same with the explicit float32 kernel), ``"copy"`` (the prefix copied per row). Vectors agree within 1e-5."""
    on_truncation: OnTruncation = "warn"
    """Texts longer than their max length: ``"warn"`` (one warning per call), ``"error"`` or ``"ignore"``."""
    show_progress: bool | None = None
    """Show a progress bar (model loading included); None = only when a call needs more than one batch."""
    trust_remote_code: bool = False
    """Passed to ``from_pretrained``. Off by default."""
    cache_dir: str | None = None
    """Hugging Face cache directory, passed to ``from_pretrained``."""
    revision: str | None = None
    """Model revision (branch, tag or commit), passed to ``from_pretrained``."""
    use_fp16: bool | None = None
    """FlagEmbedding compatibility: False means float32; True float16 on GPU and, as in FlagEmbedding, float32 on the
    CPU. Used only when ``dtype="auto"``."""
    use_bf16: bool | None = None
    """FlagEmbedding compatibility: True means bfloat16 on GPU. Used only when ``dtype="auto"``."""
    convert_to_numpy: bool = True
    """FlagEmbedding's meaning: ``encode_*`` return a numpy array; False = a float32 torch tensor (on the CPU)."""
    truncate_dim: int | None = None
    """Keep the first ``truncate_dim`` dimensions of each vector (before normalization, as FlagEmbedding); > 0."""

    # -- unknown names ---------------------------------------------------------------------------

    @model_validator(mode="before")
    @classmethod
    def _known_names(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            check_names(cls, data)
        return data

    # -- values -----------------------------------------------------------------------------------

    @field_validator("model_name", mode="before")
    @classmethod
    def _model_name(cls, value: Any) -> str:
        value = os.fspath(value) if isinstance(value, os.PathLike) else value
        if not isinstance(value, str) or not value:
            msg = f"model_name must be a non-empty str (hub id or local directory), got {value!r}"
            raise OptionValueError(msg, option="model_name", value=value)
        return value

    @field_validator("examples_for_task", mode="before")
    @classmethod
    def _examples(cls, value: Any) -> tuple[dict[str, str], ...] | None:
        return None if value is None else check_examples(value)  # shape and types; instructions: below

    @field_validator("query_instruction_for_retrieval", "suffix", "cache_dir", "revision", mode="before")
    @classmethod
    def _text(cls, value: Any, info: ValidationInfo) -> str | None:
        value = os.fspath(value) if info.field_name == "cache_dir" and isinstance(value, os.PathLike) else value
        if value is None and info.field_name != "suffix":
            return None
        if not isinstance(value, str):
            nullable = "" if info.field_name == "suffix" else " or None"
            msg = f"{info.field_name} must be a str{nullable}, got {type(value).__name__}"
            raise OptionTypeError(msg, option=str(info.field_name), value=value)
        return value

    @field_validator("query_instruction_format", "examples_instruction_format", mode="before")
    @classmethod
    def _template(cls, value: Any, info: ValidationInfo) -> str:
        slots = 2 if info.field_name == "query_instruction_format" else 3
        return validate_template(str(info.field_name), value, slots)

    @field_validator(
        "query_max_length", "passage_max_length", "batch_size", "max_batch_tokens", "truncate_dim", mode="before"
    )
    @classmethod
    def _positive(cls, value: Any, info: ValidationInfo) -> int | None:
        if value is None and info.field_name in ("max_batch_tokens", "truncate_dim", "batch_size"):
            return None
        return positive_int(str(info.field_name), value)

    @field_validator(
        "normalize_embeddings",
        "prefix_cache",
        "trust_remote_code",
        "show_progress",
        "use_fp16",
        "use_bf16",
        "convert_to_numpy",
        mode="before",
    )
    @classmethod
    def _flag(cls, value: Any, info: ValidationInfo) -> bool | None:
        nullable = info.field_name in ("show_progress", "use_fp16", "use_bf16")
        if value is None and nullable:
            return None
        return flag(str(info.field_name), value, nullable)

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, value: Any) -> str | int | tuple[str | int, ...] | None:
        return check_devices(value)

    @field_validator("prefix_attention", mode="before")
    @classmethod
    def _prefix_attention(cls, value: Any) -> str:
        return check_prefix_attention(value)

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype(cls, value: Any) -> str:
        return check_dtype(value)

    @field_validator("attn_implementation", mode="before")
    @classmethod
    def _attention(cls, value: Any) -> str | None:
        return check_attention(value)

    @field_validator("batch_wait_ms", mode="before")
    @classmethod
    def _milliseconds(cls, value: Any, info: ValidationInfo) -> float:
        number = None if is_bool(value) or not isinstance(value, numbers.Real) else float(value)
        if number is None or not 0 <= number < float("inf"):
            msg = f"{info.field_name} must be a number of milliseconds >= 0, got {value!r}"
            raise OptionValueError(msg, option=str(info.field_name), value=value)
        return number

    @field_validator("on_truncation", mode="before")
    @classmethod
    def _on_truncation(cls, value: Any) -> OnTruncation:
        return check_mode(value)

    @field_serializer("examples_for_task", "devices")
    def _as_lists(self, value: Any) -> Any:
        # Dumps (to_dict, JSON) hold lists, as users write them; validation turns them into tuples again.
        return [dict(v) if isinstance(v, Mapping) else v for v in value] if isinstance(value, tuple) else value

    @model_validator(mode="after")
    def _examples_have_an_instruction(self) -> EmbedderOptions:
        fill_instructions(self.examples_for_task or (), self.query_instruction_for_retrieval)
        return self

    # -- fixed after construction --------------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        if name in EmbedderOptions.OPTION_NAMES:
            raise FrozenOptionError(frozen_message(name))
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if name in EmbedderOptions.OPTION_NAMES:
            raise FrozenOptionError(frozen_message(name))
        super().__delattr__(name)

    @classmethod
    def checked(cls, **values: Any) -> EmbedderOptions:
        """``EmbedderOptions(**values)``, raising the :class:`~bge_icl.errors.OptionError` inside pydantic's
        ``ValidationError`` (its ``.option`` and ``.value`` fields), as :class:`~bge_icl.ICLEmbedder` does.

        Raises:
            OptionTypeError: An unknown name, or a value of the wrong type.
            OptionValueError: A value out of range.
        """
        try:
            return EmbedderOptions(**values)
        except ValidationError as e:
            raise option_errors(e)[0] from None

    def option_values(self) -> dict[str, Any]:
        """The options only (no framework fields of a subclass), by name."""
        return {name: getattr(self, name) for name in EmbedderOptions.OPTION_NAMES}

    def options(self) -> EmbedderOptions:
        """The options as a plain :class:`EmbedderOptions` (for a subclass: without its framework fields)."""
        if type(self) is EmbedderOptions:
            return self
        return EmbedderOptions.model_construct(**self.option_values())

    def replace(self, **changes: Any) -> EmbedderOptions:
        """New, validated options: these with ``changes`` applied.

        Raises:
            TypeError: A name is not an option, or a value has the wrong type.
            ValueError: A value is out of range.
        """
        base = self.option_values()
        if set(changes) & set(MODEL_ALIASES):
            del base["model_name"]  # else the old model_name would win over a new model_name_or_path / model
        return EmbedderOptions.checked(**{**base, **changes})


EmbedderOptions.OPTION_NAMES = tuple(EmbedderOptions.model_fields)


class Declared(NamedTuple):
    """One option as :class:`EmbedderOptions` declares it, for the edges that offer it (flags, config fields).

    Attributes:
        name: The option's name.
        default: Its default (None where the core decides at build, from the device).
        doc: Its docstring, as declared.
    """

    name: str
    default: Any
    doc: str

    @property
    def help(self) -> str:
        """The doc on one line without reST quotes, for a command line's ``--help``."""
        return " ".join(self.doc.replace("``", "").split())


def declared(name: str) -> Declared:
    """The declaration of option ``name`` (its default and doc), read from :class:`EmbedderOptions`.

    Raises:
        KeyError: ``name`` is not an option.

    Example:
        >>> declared("query_max_length").default
        512
    """
    field = EmbedderOptions.model_fields[name]
    return Declared(name, field.default, field.description or "")


def option_errors(error: ValidationError) -> list[Exception]:
    """The errors inside pydantic's ``error``: each one a validator raised (pydantic keeps it in ``ctx["error"]``;
    the core's are :class:`~bge_icl.errors.OptionError`), else an ``OptionValueError`` built from pydantic's own
    fields (``loc``, ``msg``, ``input``).

    The one place that digs into pydantic's error records; callers read the errors' fields.
    """
    found: list[Exception] = []
    for record in error.errors():
        cause = record.get("ctx", {}).get("error")
        if isinstance(cause, Exception):
            found.append(cause)
            continue
        name = str(record["loc"][0]) if record["loc"] else "options"
        found.append(OptionValueError(f"{name}: {record['msg']}", option=name, value=record.get("input")))
    return found


def refuse_options(given: Iterable[str], names: Iterable[str], why: str, error: type[Exception] = ValueError) -> None:
    """Raise ``error(why.format(set))`` when ``given`` sets any option of ``names`` (sorted, a list): the options an
    edge decides itself (a SentenceTransformer's weights, a server config's model and examples).

    Example:
        >>> refuse_options({"dtype": "float16"}, ["dtype", "devices"], "{} come from the model")
        Traceback (most recent call last):
        ...
        ValueError: ['dtype'] come from the model
    """
    fixed = sorted(set(given) & set(names))
    if fixed:
        msg = why.format(fixed)
        raise error(msg)


def frozen_message(name: str) -> str:
    """Why an option cannot be assigned, and what to do instead."""
    hint = "with_examples(...) or " if name == "examples_for_task" else ""
    return (
        f"option {name!r} is fixed once the embedder is built (its vectors were made with it); for another value "
        f"use {hint}.with_options({name}=...), a new instance that shares the loaded weights"
    )


def check_names(model: type[BaseModel], data: Mapping[str, Any]) -> None:
    """Raise TypeError for keys of ``data`` that are not fields (or aliases) of ``model``, with hints."""
    valid = set(model.model_fields) | set(MODEL_ALIASES)
    unknown = sorted(str(key) for key in data if key not in valid)
    if not unknown:
        return
    hints = []
    for name in unknown:
        guess = NEAR_MISSES.get(name) or ", ".join(difflib.get_close_matches(name, sorted(valid), n=2, cutoff=0.75))
        hints.append(f"{name!r} (did you mean {guess}?)" if guess else repr(name))
    what = "option" if len(unknown) == 1 else "options"
    msg = f"unknown {what} {', '.join(hints)}; valid options: {', '.join(sorted(model.model_fields))}"
    raise OptionTypeError(msg, option=unknown[0])
