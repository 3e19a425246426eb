"""One fingerprint of what determines a vector, shared by both adapters' caches."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from bge_icl.options import EmbedderOptions


def fingerprint(
    options: EmbedderOptions, kind: Literal["queries", "passages"], *, source: str, dtype: str, dimension: int,
    prefix: str,
) -> str:  # fmt: skip
    """sha256 of the resolved model, revision, dtype, dimension, normalization, the max length and, for queries,
    the whole prompt (the few-shot ``prefix`` text, instruction, template, suffix)."""
    settings: dict[str, Any] = {
        "model": source,
        "revision": options.revision,
        "dtype": dtype,
        "dimension": dimension,
        "normalize": options.normalize_embeddings,
    }
    if kind == "passages":
        settings["passage_max_length"] = options.passage_max_length
    else:
        settings.update(
            prefix=prefix,
            instruction=options.query_instruction_for_retrieval,
            query_format=options.query_instruction_format,
            suffix=options.suffix,
            query_max_length=options.query_max_length,
        )
    return hashlib.sha256(json.dumps(settings, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
