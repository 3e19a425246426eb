"""Parity with FlagEmbedding 1.4.2's FlagICLModel itself (runs where FlagEmbedding imports: transformers 4.x).

`make test` runs this file in the .venv-ref environment (transformers 4.57 + FlagEmbedding 1.4.2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bge_icl import ICLEmbedder
from tests.bge_icl.cases import CONFIGS, PASSAGES, QUERIES, WEB
from tests.conftest import NOTEBOOK_DOCUMENTS, NOTEBOOK_EXAMPLES, NOTEBOOK_QUERIES

FlagEmbedding = pytest.importorskip("FlagEmbedding", reason="FlagEmbedding needs transformers 4.x (.venv-ref)")
pytestmark = pytest.mark.parity

MAX_DELTAS: dict[str, float] = {}


def _flag(tiny_dir: Path, **kwargs: Any) -> Any:
    return FlagEmbedding.FlagICLModel(str(tiny_dir), use_fp16=False, devices="cpu", **kwargs)


@pytest.mark.parametrize(("name", "examples", "instruction", "qmax", "pmax"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_parity_with_flagiclmodel(
    tiny_dir: Path, name: str, examples: Any, instruction: str | None, qmax: int, pmax: int
) -> None:
    flag = _flag(
        tiny_dir,
        examples_for_task=examples,
        query_instruction_for_retrieval=instruction,
        query_max_length=qmax,
        passage_max_length=pmax,
    )
    ours = ICLEmbedder(
        str(tiny_dir),
        examples_for_task=examples,
        query_instruction_for_retrieval=instruction,
        query_max_length=qmax,
        passage_max_length=pmax,
        devices="cpu",
        dtype="float32",  # FlagEmbedding's vectors: float32 on the CPU (FlagICLModel's default, dtype="auto" here)
        on_truncation="ignore",
    )
    dq = float(np.abs(ours.encode_queries(QUERIES) - flag.encode_queries(QUERIES)).max())
    dp = float(np.abs(ours.encode_corpus(PASSAGES) - flag.encode_corpus(PASSAGES)).max())
    MAX_DELTAS[name] = max(dq, dp)
    print(f"parity {name}: max|dq|={dq:.3g} max|dp|={dp:.3g}")
    assert dq <= 1e-5
    assert dp <= 1e-5


def test_notebook_last_cell(tiny_dir: Path) -> None:
    """The notebook's last cell, import line changed, local checkpoint, CPU: FlagICLModel's 2x2 matrix."""
    from bge_icl import ICLEmbedder as FlagICLModel

    def cell(cls: Any) -> np.ndarray:
        model = cls(
            str(tiny_dir),
            query_instruction_for_retrieval=WEB,
            examples_for_task=NOTEBOOK_EXAMPLES,
            use_fp16=True,
            devices="cpu",
        )
        embeddings_1 = model.encode_queries(NOTEBOOK_QUERIES)
        embeddings_2 = model.encode_corpus(NOTEBOOK_DOCUMENTS)
        return embeddings_1 @ embeddings_2.T

    ours, theirs = cell(FlagICLModel), cell(FlagEmbedding.FlagICLModel)
    print("notebook similarity, bge_icl:", ours.tolist(), "FlagICLModel:", theirs.tolist())
    assert ours.shape == (2, 2)
    assert np.abs(ours - theirs).max() <= 1e-5
