"""``EmbedderModel``: the pydantic base of the framework adapters, built on :class:`~bge_icl.options.EmbedderOptions`.

The LangChain and LlamaIndex adapters subclass it next to their framework's base class, so they
declare no option of their own: they inherit every :class:`EmbedderOptions` field (type, default,
validation, doc) and this behaviour:

- the options are fixed after construction: assigning one raises :class:`~bge_icl.options.FrozenOptionError`
  (a framework's own fields, such as LlamaIndex's ``callback_manager``, stay assignable);
- ``model_copy(update=...)`` with an option builds a consistent new embedder (sharing the loaded weights),
  and an unknown name raises;
- :meth:`from_embedder`, :meth:`with_options` and :meth:`with_examples` reuse loaded weights;
- copies share the loaded weights; a pickle carries the configuration and loads (or reuses) the model
  when unpickled.

It imports no framework.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, PrivateAttr
from typing_extensions import Self

from bge_icl.encoder import ICLEmbedder
from bge_icl.flag_model import FlagICLModel
from bge_icl.options import EmbedderOptions, check_names


class EmbedderModel(EmbedderOptions):
    """Options plus the :class:`~bge_icl.ICLEmbedder` they built; the base of both adapters."""

    _embedder: ICLEmbedder = PrivateAttr()

    def __init__(self, /, **data: Any) -> None:
        """Check the options and the framework's fields, then load the model (or reuse the process's copy).

        Raises:
            TypeError / ValueError: An unknown name or a bad value (:class:`~bge_icl.errors.OptionError`).
        """
        super().__init__(**data)
        self._embedder = self._build_embedder()

    def _build_embedder(self) -> ICLEmbedder:
        """The embedder of these options (a subclass may build another kind)."""
        return ICLEmbedder.from_options(self)

    @classmethod
    def _around(cls, embedder: Any, fields: Mapping[str, Any]) -> Self:
        """An instance on ``embedder`` as it is: the fields checked as the constructor checks them, nothing built."""
        adapter = cls.__new__(cls)
        BaseModel.__init__(adapter, **fields)  # pydantic's validation alone, not this class's __init__
        adapter._embedder = embedder
        return adapter

    @classmethod
    def framework_fields(cls) -> list[str]:
        """The fields that are the framework's, not bge-icl options (they are not fixed)."""
        return sorted(set(cls.model_fields) - set(EmbedderOptions.OPTION_NAMES))

    @classmethod
    def from_embedder(cls, embedder: ICLEmbedder, **fields: Any) -> Self:
        """Wrap an existing :class:`~bge_icl.ICLEmbedder`: its options become this instance's, its model is used.

        Args:
            embedder: The core embedder (a :class:`~bge_icl.FlagICLModel`, which can change in place, is wrapped as
                a fixed :class:`~bge_icl.ICLEmbedder` with its current options, on the same weights).
            **fields: The framework's own fields only (e.g. LlamaIndex's ``embed_batch_size``).

        Raises:
            TypeError: ``embedder`` is not an ``ICLEmbedder``, or ``fields`` names an option or an unknown field.
        """
        if not isinstance(embedder, ICLEmbedder):
            msg = f"from_embedder() takes a bge_icl.ICLEmbedder, got {type(embedder).__name__}"
            raise TypeError(msg)
        options = sorted(set(fields) & set(EmbedderOptions.OPTION_NAMES))
        if options:
            msg = (
                f"from_embedder() takes the options from the embedder, got {options}; use "
                f"embedder.with_options(...) first, or pass only {cls.framework_fields()}"
            )
            raise TypeError(msg)
        if isinstance(embedder, FlagICLModel):  # its set_examples() would leave these fields stale: take a fixed copy
            embedder = ICLEmbedder.from_options(embedder.options)
        return cls._around(embedder, {**embedder.options.option_values(), **fields})

    @property
    def embedder(self) -> ICLEmbedder:
        """The core embedder: call it directly or share it with the other adapter."""
        return self._embedder

    def with_options(self, **changes: Any) -> Self:
        """A new instance with ``changes`` (options and framework fields), sharing the loaded weights.

        Raises:
            TypeError / ValueError: As the constructor would.
        """
        check_names(type(self), changes)
        options = {k: v for k, v in changes.items() if k not in self.framework_fields()}
        fields = {name: getattr(self, name) for name in self.framework_fields()}
        fields.update((k, v) for k, v in changes.items() if k in fields)
        embedder = self._embedder.with_options(**options)
        return self._around(embedder, {**embedder.options.option_values(), **fields})

    def with_examples(self, examples_for_task: Sequence[Mapping[str, str]] | None) -> Self:
        """The same embeddings with other few-shot examples (None = zero-shot), sharing the loaded weights."""
        return self.with_options(examples_for_task=examples_for_task)

    @property
    def dimension(self) -> int:
        """Size of each vector (4096 for bge-en-icl)."""
        return self._embedder.dimension

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; with options in ``update``, a new consistent embedder (as :meth:`with_options`)."""
        if update and set(update) - set(self.framework_fields()):
            return self.with_options(**update)
        return super().model_copy(update=update, deep=deep)
