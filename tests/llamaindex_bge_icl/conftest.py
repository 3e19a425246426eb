"""Fixtures for the LlamaIndex adapter tests: one tiny model, shared through the core registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bge_icl import WEB_SEARCH_INSTRUCTION, ICLEmbedder
from tests.conftest import NOTEBOOK_DOCUMENTS, NOTEBOOK_EXAMPLES

# A corpus big enough for top-k ranking to mean something (the tiny model's weights are random).
CORPUS = [
    *NOTEBOOK_DOCUMENTS,
    "Protein needs rise with pregnancy, breastfeeding and endurance training.",
    "A summit is also a meeting of heads of government.",
    "Mount Everest's summit is 8,849 metres above sea level.",
    "Lentils, tofu and Greek yogurt are dense sources of protein.",
    "The virtual interface shares one physical network card between containers.",
    "Back pain that lasts more than a week deserves a visit to a doctor.",
]


@pytest.fixture(scope="session")
def options(tiny_dir: Path) -> dict[str, Any]:
    """ICLEmbedder options for the tiny checkpoint, with the notebook's few-shot examples."""
    return {
        "model_name_or_path": str(tiny_dir),
        "examples_for_task": NOTEBOOK_EXAMPLES,
        "query_instruction_for_retrieval": WEB_SEARCH_INSTRUCTION,
        "devices": "cpu",
        "dtype": "float32",  # the adapter tests compare vectors within float32's tolerances
        "on_truncation": "ignore",
    }


@pytest.fixture(scope="session")
def core(options: dict[str, Any]) -> ICLEmbedder:
    """The reference: the core embedder, built independently of the adapter."""
    return ICLEmbedder(**options)


@pytest.fixture(scope="session")
def fields(options: dict[str, Any]) -> dict[str, Any]:
    """The same options as BgeIclEmbedding fields."""
    out = dict(options)
    out["model_name"] = out.pop("model_name_or_path")
    return out


@pytest.fixture
def emb(fields: dict[str, Any]) -> Any:
    """A fresh ``BgeIclEmbedding`` per test (cheap: the weights come from the registry)."""
    llamaindex_bge_icl = pytest.importorskip("llamaindex_bge_icl")
    return llamaindex_bge_icl.BgeIclEmbedding(**fields)
