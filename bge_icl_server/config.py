"""``ServerConfig``: what one embeddings server serves, as a frozen, typed, picklable object.

A config holds data only (the model, its options, the example sets already read from their files, the limits),
so it can be built in one process and used in another: ``bge-icl serve`` builds it from its flags, and a Ray
Serve replica builds the same app from the same config (:mod:`ray_bge_icl.serve`). Validation happens when the
config is built, before any model is loaded: a bad option, a malformed example set or a clash of model ids is a
``ValueError`` / ``TypeError`` naming the field and the valid values.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bge_icl.example_sets import load_example_set as read_example_set
from bge_icl.kinds import Kind
from bge_icl.options import MODEL_ALIASES, EmbedderOptions, option_errors, refuse_options
from bge_icl.prompts import validate_examples
from bge_icl.quickstart import bundled_example_sets

__all__ = ["ExampleSet", "ServerConfig", "bundled_example_sets", "default_served_name", "load_example_set"]

DEFAULT_MAX_INPUTS = 2048
DEFAULT_MAX_REQUEST_BYTES = 16 * 2**20
DEFAULT_MAX_QUEUE_ROWS = 4 * DEFAULT_MAX_INPUTS
QUERY_ROLE = ":query"
"""``ID:query`` is model id ``ID`` with every input embedded as a query: for clients that send OpenAI's fields only."""
# Options a config sets through its own fields (the example sets and the instruction are per model id).
NOT_OPTIONS = ("examples_for_task", "query_instruction_for_retrieval", *MODEL_ALIASES)


class ExampleSet(BaseModel):
    """A few-shot example set, served as one model id.

    Attributes:
        examples: The examples, each ``{"instruct"?, "query", "response"}``.
        instruction: The task instruction put before each query (and examples without ``instruct``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    examples: tuple[dict[str, str], ...] = Field(min_length=1)
    instruction: str | None = None

    @model_validator(mode="after")
    def _valid(self) -> ExampleSet:
        validate_examples(self.examples, self.instruction)  # raises with the example's index and the missing key
        return self


def load_example_set(spec: str, instruction: str | None = None) -> ExampleSet:
    """An :class:`ExampleSet` from a bundled set's name or a JSON file (the core's one loader,
    :func:`bge_icl.example_sets.load_example_set`: an existing file first, then a bundled name).

    A bundled set brings its own instruction (``web-search``: the web-search one), as ``bge-icl embed --examples
    web-search`` does. For a file, ``instruction`` is the task instruction; without one, the ``instruct`` its
    examples share.

    Raises:
        ValueError: The file is missing or not JSON, the examples are malformed, or the name is unknown (the message
            lists the bundled sets).
    """
    loaded = read_example_set(spec)
    own = loaded.shared_instruct if loaded.bundled else (instruction or loaded.shared_instruct)
    try:
        return ExampleSet(examples=loaded.examples, instruction=own)
    except ValidationError as e:  # the core's example check raised inside pydantic: its error, with its own words
        reason = "; ".join(str(c) for c in option_errors(e))
        msg = f"{loaded.source}: {reason} (a JSON list of {{instruct?, query, response}} objects)"
        raise ValueError(msg) from e


def default_served_name(model: str) -> str:
    """The model id a server answers to by default: a local checkpoint's directory name, else the hub id."""
    path = Path(model).expanduser()
    return path.resolve().name if path.is_dir() else model


class ServerConfig(BaseModel):
    """What one embeddings server serves; the same object builds the app in ``bge-icl serve`` and in Ray Serve.

    Example:
        >>> config = ServerConfig(model="BAAI/bge-en-icl", example_sets={"web-search": load_example_set("web-search")},
        ...                       options={"dtype": "float16"})  # doctest: +SKIP
        >>> config.model_ids  # doctest: +SKIP
        ('BAAI/bge-en-icl', 'web-search')
    """

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=(), use_attribute_docstrings=True)

    model: str = Field(min_length=1)
    """Hub id or local checkpoint directory."""
    served_name: str = ""
    """The model id whose queries run zero-shot (default: the checkpoint's directory name, or the hub id)."""
    example_sets: dict[str, ExampleSet] = Field(default_factory=dict)
    """Each example set, by the model id that selects it."""
    instruction: str | None = None
    """The task instruction of the served name's (zero-shot) queries; None = the query as it is."""
    api_key: str | None = Field(default=None, repr=False)
    """When set, every ``/v1/`` request must send ``Authorization: Bearer <api_key>``; printable ASCII, not empty."""
    allow_dimensions: bool = False
    """Let a request's ``dimensions`` cut the vectors below the model's dimension (bge-en-icl is not trained for
    shortened vectors, so by default such a request is a 400 saying so)."""
    cors_origins: tuple[str, ...] = ()
    """Origins whose browser pages may call the server (CORS; ``"*"``: any); empty: no CORS headers."""
    max_inputs: int = Field(default=DEFAULT_MAX_INPUTS, gt=0)
    """Most texts in one request (more: 413)."""
    max_request_bytes: int = Field(default=DEFAULT_MAX_REQUEST_BYTES, gt=0)
    """Largest request body, in bytes (larger: 413)."""
    max_queue_rows: int = Field(default=DEFAULT_MAX_QUEUE_ROWS, gt=0)
    """Most texts in the model's queue (waiting or running); a request that would pass it gets 503 with
    ``Retry-After`` (from the queue's measured drain rate). A request is always admitted when the queue is empty."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Other :class:`~bge_icl.options.EmbedderOptions` (``devices``, ``dtype``, ``batch_size``, ...)."""

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and not data.get("served_name") and isinstance(data.get("model"), str):
            data = {**data, "served_name": default_served_name(data["model"])}
        return data

    @field_validator("example_sets", mode="before")
    @classmethod
    def _sets(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            for name in value:
                if not isinstance(name, str) or not name.strip() or name != name.strip() or name.endswith(QUERY_ROLE):
                    msg = (f"example set name {name!r} is not a model id: use a non-empty name without outer spaces, "
                           f"not ending in {QUERY_ROLE!r}")  # fmt: skip
                    raise ValueError(msg)
        return value

    @field_validator("api_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            msg = "the API key is empty (an unset variable?): give a key, or none at all to serve without one"
            raise ValueError(msg)
        if value is not None and not (value.isascii() and value.isprintable() and " " not in value):
            msg = ("the API key holds a space, a control or a non-ASCII character, which an HTTP header cannot carry: "
                   "use printable ASCII (letters, digits, punctuation)")  # fmt: skip
            raise ValueError(msg)
        return value

    @field_validator("options")
    @classmethod
    def _options(cls, value: dict[str, Any]) -> dict[str, Any]:
        why = ("options may not set {}: the model is ServerConfig.model, and the examples and instruction belong to "
               "each model id (example_sets, instruction)")  # fmt: skip
        refuse_options(value, NOT_OPTIONS, why)
        EmbedderOptions.checked(**value)  # unknown names and bad values, with the option's name and the valid ones
        return value

    @model_validator(mode="after")
    def _ids(self) -> ServerConfig:
        if self.served_name.endswith(QUERY_ROLE):
            msg = f"the served name {self.served_name!r} ends in {QUERY_ROLE!r}, which names a model id's queries"
            raise ValueError(msg)
        if self.served_name in self.example_sets:
            msg = (
                f"the served name {self.served_name!r} is also an example set's name; each model id must be "
                "unique: rename the set or pick another served name"
            )
            raise ValueError(msg)
        return self

    @property
    def model_ids(self) -> tuple[str, ...]:
        """Every model id served: the served name first (zero-shot queries), then the example sets."""
        return (self.served_name, *self.example_sets)

    @property
    def listed_ids(self) -> tuple[str, ...]:
        """What ``GET /v1/models`` lists: each model id, then each one's ``ID:query`` (:data:`QUERY_ROLE`)."""
        return (*self.model_ids, *(f"{name}{QUERY_ROLE}" for name in self.model_ids))

    def role(self, listed_id: str) -> tuple[str, Kind | None] | None:
        """The model id a listed id names and the kind it fixes (``"queries"`` for ``ID:query``, else None);
        None for an id not served."""
        name = listed_id.removesuffix(QUERY_ROLE)
        if name not in self.model_ids:
            return None
        return name, ("queries" if listed_id.endswith(QUERY_ROLE) else None)

    def embedder_options(self) -> EmbedderOptions:
        """The validated options of the zero-shot embedder (the served name's, which also embeds every passage)."""
        return EmbedderOptions.checked(
            **{"show_progress": False, **self.options},
            model_name=self.model,
            query_instruction_for_retrieval=self.instruction,
        )
