"""LangChain's standard embeddings test suites (langchain-tests), run on the tiny local checkpoint."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langchain_tests")

from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from bge_icl import WEB_SEARCH_INSTRUCTION
from langchain_bge_icl import BgeIclEmbeddings
from tests.conftest import NOTEBOOK_EXAMPLES


class _TinyCheckpoint:
    """Feeds the session's tiny checkpoint path into the suites' ``embedding_model_params`` property."""

    tiny_path: str = ""

    @pytest.fixture(autouse=True, scope="class")
    def _use_tiny_checkpoint(self, request: pytest.FixtureRequest, tiny_path: str) -> None:
        request.cls.tiny_path = tiny_path

    @property
    def embeddings_class(self) -> type[BgeIclEmbeddings]:
        return BgeIclEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        assert self.tiny_path, "the _use_tiny_checkpoint fixture did not run"
        return {
            "model": self.tiny_path,
            "devices": "cpu",
            "examples_for_task": NOTEBOOK_EXAMPLES,
            "query_instruction_for_retrieval": WEB_SEARCH_INSTRUCTION,
        }


class TestBgeIclEmbeddingsUnit(_TinyCheckpoint, EmbeddingsUnitTests):
    """Unit suite. ``init_from_env_params`` keeps its default: the adapter reads no environment
    variables (no API key; the model is a path or hub id), so ``test_init_from_env`` has nothing to check."""


class TestBgeIclEmbeddingsIntegration(_TinyCheckpoint, EmbeddingsIntegrationTests):
    """Integration suite: embed_query / embed_documents and their async forms on a real (tiny) model."""
