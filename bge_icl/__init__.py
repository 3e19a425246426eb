"""bge-icl: BAAI/bge-en-icl in-context-learning embeddings for RAG apps.

Example:
    >>> from bge_icl import ICLEmbedder  # doctest: +SKIP
    >>> emb = ICLEmbedder("BAAI/bge-en-icl", examples_for_task=[...])  # doctest: +SKIP
    >>> emb.encode_queries(["q1", "q2"]).shape  # doctest: +SKIP
    (2, 4096)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bge_icl.kinds import Kind
from bge_icl.prompts import WEB_SEARCH_INSTRUCTION, ICLExample
from bge_icl.truncation import TruncationError, TruncationWarning

if TYPE_CHECKING:
    from bge_icl.encoder import Embedded, ICLEmbedder, Request, Stats
    from bge_icl.flag_model import FlagICLModel
    from bge_icl.options import EmbedderOptions, FrozenOptionError

# Loaded on first use, so that ``import bge_icl`` (and ``bge-icl --help``) does not import torch.
_LAZY = {
    "ICLEmbedder": "bge_icl.encoder",
    "Embedded": "bge_icl.encoder",
    "Request": "bge_icl.encoder",
    "FlagICLModel": "bge_icl.flag_model",
    "Stats": "bge_icl.encoder",
    "EmbedderOptions": "bge_icl.options",
    "FrozenOptionError": "bge_icl.options",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    msg = f"module 'bge_icl' has no attribute {name!r}"
    raise AttributeError(msg)

__all__ = [
    "WEB_SEARCH_INSTRUCTION",
    "Embedded",
    "EmbedderOptions",
    "FlagICLModel",
    "FrozenOptionError",
    "ICLEmbedder",
    "ICLExample",
    "Kind",
    "Request",
    "Stats",
    "TruncationError",
    "TruncationWarning",
]
__version__ = "0.1.0"
