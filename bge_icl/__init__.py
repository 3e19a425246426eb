"""bge-icl: BAAI/bge-en-icl in-context-learning embeddings for RAG apps.

Example:
    >>> from bge_icl import ICLEmbedder  # doctest: +SKIP
    >>> emb = ICLEmbedder("BAAI/bge-en-icl", examples_for_task=[...])  # doctest: +SKIP
    >>> emb.encode_queries(["q1", "q2"]).shape  # doctest: +SKIP
    (2, 4096)
"""

from __future__ import annotations

from bge_icl.encoder import ICLEmbedder, Stats
from bge_icl.options import EmbedderOptions, FrozenOptionError
from bge_icl.prompts import WEB_SEARCH_INSTRUCTION, ICLExample
from bge_icl.truncation import TruncationError, TruncationWarning

__all__ = [
    "WEB_SEARCH_INSTRUCTION",
    "EmbedderOptions",
    "FrozenOptionError",
    "ICLEmbedder",
    "ICLExample",
    "Stats",
    "TruncationError",
    "TruncationWarning",
]
__version__ = "0.1.0"
