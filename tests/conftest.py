"""Session fixtures: seeded random-weight bge-en-icl checkpoints with the real tokenizer, built offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from bge_icl.quickstart import DOCUMENTS, EXAMPLES, QUERIES
from bge_icl.testing import build_checkpoint

# The seed notebook's data: the model card's two web-search examples, its two queries and two passages.
NOTEBOOK_EXAMPLES = EXAMPLES
NOTEBOOK_QUERIES = QUERIES
NOTEBOOK_DOCUMENTS = DOCUMENTS
# A small corpus to rank (near misses for each notebook query: protein, summit, interface, back pain) and its queries,
# for the tests that compare a retriever or a vector store with brute force.
SEARCH_CORPUS = [
    *NOTEBOOK_DOCUMENTS,
    "Protein needs rise during pregnancy and for endurance athletes training for a marathon.",
    "A summit is the highest point of a hill or mountain.",
    "The G7 summit brought together the leaders of seven industrialized nations.",
    "Virtual network interfaces let containers share one physical network card.",
    "Lower back pain is often caused by muscle strain or poor posture.",
    "Eggs, lentils, chicken and tofu are good sources of dietary protein.",
    "Mount Everest's summit is 8,849 metres above sea level.",
    "Osteoporosis weakens bones and can cause back pain in older women.",
    "A MAC address identifies a network interface on a local network.",
    "Climbers reached the summit at dawn after a twelve-hour ascent.",
]
SEARCH_QUERIES = [*NOTEBOOK_QUERIES, "what causes back pain", "network interface card"]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-64 MistralModel with random weights (seed 0) and bge-en-icl's tokenizer."""
    return build_checkpoint(tmp_path_factory.mktemp("tiny-bge-icl"), seed=0)


@pytest.fixture(scope="session")
def tiny_no_eos_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights as ``tiny_dir``, but a tokenizer saved with ``add_eos_token=False``."""
    return build_checkpoint(tmp_path_factory.mktemp("tiny-bge-icl-no-eos"), seed=0, add_eos_token=False)


@pytest.fixture(scope="session")
def st_model(tiny_dir: Path):  # type: ignore[no-untyped-def]
    """``SentenceTransformer(tiny_dir)``: the tiny checkpoint through the hub repo's sentence-transformers files."""
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(str(tiny_dir), device="cpu")
