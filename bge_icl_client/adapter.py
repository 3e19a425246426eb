"""``ServedModel``: the adapters' base (:class:`~bge_icl.adapter.EmbedderModel`) plus ``endpoint``, their remote mode.

``BgeIclEmbeddings`` and ``BgeIclEmbedding`` subclass it: with ``endpoint=Endpoint(...)`` they embed through a
running ``bge-icl serve`` (:class:`~bge_icl_client.remote.RemoteEmbedder`) instead of loading the weights, with the
same methods, query/passage semantics, async and input errors. It imports no framework and no HTTP library.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from typing_extensions import Self

from bge_icl.adapter import EmbedderModel
from bge_icl.errors import OptionTypeError
from bge_icl.options import EmbedderOptions
from bge_icl_client.remote import Endpoint, RemoteEmbedder


class ServedModel(EmbedderModel):
    """The options and the loaded embedder, or an endpoint and its client."""

    endpoint: Endpoint | None = Field(default=None, frozen=True)
    """A running ``bge-icl serve`` to embed with instead of loading the weights here (None: load them). Its model id
    decides the examples and instruction of queries; the options are the server's, so none may be given with it."""

    def _build_embedder(self) -> Any:
        if self.endpoint is None:
            return super()._build_embedder()
        given = sorted(set(self.model_fields_set) & set(EmbedderOptions.OPTION_NAMES))
        if given:
            msg = (f"with an endpoint the options are the server's (bge-icl serve's flags, its model ids): "
                   f"got {given}; pick the model id in Endpoint(model=...) instead")  # fmt: skip
            raise OptionTypeError(msg, option=given[0], value=getattr(self, given[0]))
        return RemoteEmbedder(self.endpoint)

    def with_options(self, **changes: Any) -> Self:
        """As :meth:`EmbedderModel.with_options`; a new ``endpoint`` builds a new instance (its options: ``changes``).

        Raises:
            TypeError / ValueError: As the constructor would.
        """
        if "endpoint" not in changes:
            return super().with_options(**changes)
        fields = {name: getattr(self, name) for name in self.framework_fields()}
        return type(self)(**{**fields, **changes})
