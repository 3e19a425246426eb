"""Ray Data: embed a dataset with one :class:`~bge_icl.ICLEmbedder` per actor, for corpora beyond one machine.

Needs the ``ray`` extra: ``pip install 'bge-icl[ray]'``.

Example:
    >>> import ray.data  # doctest: +SKIP
    >>> ds = ray.data.read_parquet("s3://bucket/passages/")  # doctest: +SKIP
    >>> out = embed_dataset(ds, column="text", kind="corpus", model_name_or_path="BAAI/bge-en-icl",
    ...                     concurrency=8, num_gpus=1)  # doctest: +SKIP
    >>> out.write_parquet("s3://bucket/embeddings/")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bge_icl.encoder import ICLEmbedder
from bge_icl.kinds import kind_of
from bge_icl.optional import missing_extra
from bge_icl.options import EmbedderOptions

try:
    import ray.data
except ImportError as e:  # pragma: no cover - exercised only without ray
    raise missing_extra("ray.data", "ray", "ray_bge_icl", e) from e


class _EmbedBatch:
    """Ray Data callable class: loads one embedder per actor, embeds one column of each batch."""

    def __init__(self, column: str, kind: str, output_column: str, embedder_options: dict[str, Any]) -> None:
        self.column, self.output_column = column, output_column
        self.embedder = ICLEmbedder.from_options(EmbedderOptions(**{"show_progress": False, **embedder_options}))
        self.encode = self.embedder.encode_queries if kind_of(kind) == "queries" else self.embedder.encode_corpus

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = batch[self.column].tolist()
        return {**batch, self.output_column: np.asarray(self.encode(texts))}  # (B, H) float32


def embed_dataset(
    ds: ray.data.Dataset,
    column: str = "text",
    kind: str = "corpus",
    output_column: str = "embedding",
    *,
    concurrency: int = 1,
    num_gpus: float = 1,
    rows_per_batch: int = 256,
    **embedder_options: Any,
) -> ray.data.Dataset:
    """Add an ``output_column`` of bge-en-icl embeddings of ``column`` to ``ds``, rows in input order.

    Args:
        ds: The dataset; other columns are kept.
        column: The text column.
        kind: ``"corpus"`` (passages as they are) or ``"query"`` (few-shot prefix and instruction); the core's
            other spellings (``"passages"``, ``"queries"``, ``"document"``) work too (:func:`bge_icl.kinds.kind_of`).
        output_column: Name of the new column, float32 vectors of the model's hidden size.
        concurrency: Number of actors, each holding one model.
        num_gpus: GPUs per actor (0 for CPU actors).
        rows_per_batch: Rows per Ray batch (Ray Data's ``batch_size``); the embedder cuts its forward passes inside
            it by its own ``batch_size`` and token budget.
        **embedder_options: :class:`~bge_icl.options.EmbedderOptions`, e.g. ``model_name``,
            ``examples_for_task``, ``query_instruction_for_retrieval``, ``dtype``, ``batch_size``.

    Returns:
        A lazy Ray ``Dataset``.

    Raises:
        ValueError: Unknown ``kind``, a missing column, or a bad option value.
        TypeError: An unknown option (the message lists the valid ones).
    """
    kind_of(kind)  # "corpus" / "passage(s)" / "document(s)" or "query" / "queries"; anything else raises here
    EmbedderOptions(**embedder_options)  # unknown names and bad values fail here, not in every actor
    names = ds.schema().names
    if column not in names:
        msg = f"column={column!r} is not in the dataset; its columns are {names}"
        raise ValueError(msg)
    out = ds.map_batches(
        _EmbedBatch,
        fn_constructor_kwargs={
            "column": column,
            "kind": kind,
            "output_column": output_column,
            "embedder_options": embedder_options,
        },
        batch_size=rows_per_batch,
        batch_format="numpy",
        concurrency=concurrency,
        num_gpus=num_gpus,
    )
    out.context.execution_options.preserve_order = True
    return out
