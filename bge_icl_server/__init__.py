"""bge-icl's OpenAI-compatible embeddings server (``bge-icl serve``; extra ``bge-icl[serve]``).

Example:
    >>> from bge_icl_server import ServerConfig, create_app, load_example_set  # doctest: +SKIP
    >>> config = ServerConfig(model="BAAI/bge-en-icl", example_sets={"web-search": load_example_set("web-search")})
    >>> app = create_app(config)  # FastAPI: run it with uvicorn  # doctest: +SKIP
"""

from __future__ import annotations

from bge_icl.optional import missing_extra

try:
    import fastapi  # noqa: F401
    import prometheus_client  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise missing_extra(e.name or "fastapi", "serve", "bge_icl_server", e) from e

from bge_icl_server.app import create_app
from bge_icl_server.background import RunningServer, serve_in_thread
from bge_icl_server.config import ExampleSet, ServerConfig, bundled_example_sets, load_example_set
from bge_icl_server.service import EmbeddingService

__all__ = [
    "EmbeddingService",
    "ExampleSet",
    "RunningServer",
    "ServerConfig",
    "bundled_example_sets",
    "create_app",
    "load_example_set",
    "serve_in_thread",
]
