"""bge-icl's client of a running ``bge-icl serve``: what the adapters' remote mode (``endpoint=``) runs on.

Example:
    >>> from bge_icl_client import Endpoint  # doctest: +SKIP
    >>> from langchain_bge_icl import BgeIclEmbeddings  # doctest: +SKIP
    >>> server = Endpoint(base_url="http://127.0.0.1:8000/v1", model="web-search")  # doctest: +SKIP
    >>> embeddings = BgeIclEmbeddings(endpoint=server)  # doctest: +SKIP
"""

from __future__ import annotations

from bge_icl_client.remote import Endpoint, RemoteEmbedded, RemoteEmbedder, RemoteError

__all__ = ["Endpoint", "RemoteEmbedded", "RemoteEmbedder", "RemoteError"]
