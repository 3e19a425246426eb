"""Fixtures for the core's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from bge_icl import ICLEmbedder
from tests.bge_icl.cases import WEB
from tests.conftest import NOTEBOOK_EXAMPLES


@pytest.fixture(scope="module")
def emb(tiny_dir: Path) -> ICLEmbedder:
    """The notebook's embedder (its two examples, the web-search instruction) on the tiny checkpoint, CPU, float32
    (the tests that use it compare vectors within float32's tolerances; ``test_bf16.py`` covers the auto dtype)."""
    return ICLEmbedder(
        str(tiny_dir),
        dtype="float32",
        examples_for_task=NOTEBOOK_EXAMPLES,
        query_instruction_for_retrieval=WEB,
        devices="cpu",
        on_truncation="ignore",
    )
