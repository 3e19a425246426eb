"""Fixtures for the LangChain adapter tests: the tiny checkpoint as a path, a core embedder, the adapter."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from bge_icl import WEB_SEARCH_INSTRUCTION, ICLEmbedder
from tests.conftest import NOTEBOOK_EXAMPLES

if TYPE_CHECKING:
    from langchain_bge_icl import BgeIclEmbeddings

# langchain_bge_icl is imported inside fixtures: the test modules skip themselves without langchain-core.


@pytest.fixture(scope="session")
def tiny_path(tiny_dir: Path) -> str:
    """The tiny random-weight checkpoint directory, as the ``model`` string LangChain users pass."""
    return str(tiny_dir)


@pytest.fixture(scope="session")
def core(tiny_path: str) -> ICLEmbedder:
    """The reference: the core embedder with the notebook's examples (keeps the weights loaded)."""
    return ICLEmbedder(
        tiny_path,
        devices="cpu",
        dtype="float32",  # the adapter tests compare vectors within float32's tolerances
        examples_for_task=NOTEBOOK_EXAMPLES,
        query_instruction_for_retrieval=WEB_SEARCH_INSTRUCTION,
    )


@pytest.fixture(scope="session")
def embeddings(tiny_path: str) -> BgeIclEmbeddings:
    """The adapter, built from options (not from ``core``), with the same settings as ``core``."""
    from langchain_bge_icl import BgeIclEmbeddings

    return BgeIclEmbeddings(
        model=tiny_path,
        devices="cpu",
        dtype="float32",
        examples_for_task=NOTEBOOK_EXAMPLES,
        query_instruction_for_retrieval=WEB_SEARCH_INSTRUCTION,
    )
