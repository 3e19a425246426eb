"""bge_icl against a transcription of FlagEmbedding's encode loops, on this transformers version.

The FlagEmbedding package itself is compared in test_parity_flagembedding.py (transformers 4.x).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoModel, AutoTokenizer

from bge_icl import ICLEmbedder
from tests.bge_icl.cases import CONFIGS, PASSAGES, QUERIES
from tests.bge_icl.flag_reference import flag_encode_corpus, flag_encode_queries


@pytest.fixture(scope="module")
def reference_model(tiny_dir: Path) -> tuple[object, object]:
    return AutoModel.from_pretrained(tiny_dir).eval(), AutoTokenizer.from_pretrained(tiny_dir)


@pytest.mark.parametrize(("name", "examples", "instruction", "qmax", "pmax"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_matches_flagembedding_transcription(
    tiny_dir: Path,
    reference_model: tuple[object, object],
    name: str,
    examples: object,
    instruction: str | None,
    qmax: int,
    pmax: int,
) -> None:
    model, tok = reference_model
    emb = ICLEmbedder(
        str(tiny_dir),
        examples_for_task=examples,
        query_instruction_for_retrieval=instruction,  # type: ignore[arg-type]
        query_max_length=qmax,
        passage_max_length=pmax,
        devices="cpu",
        dtype="float32",  # the transcription runs the checkpoint in float32
        on_truncation="ignore",
    )
    ours_q, ours_p = emb.encode_queries(QUERIES), emb.encode_corpus(PASSAGES)
    ref_q = flag_encode_queries(model, tok, QUERIES, examples=examples, instruction=instruction, max_length=qmax)  # type: ignore[arg-type]
    ref_p = flag_encode_corpus(model, tok, PASSAGES, max_length=pmax)
    assert ours_q.dtype == np.float32 and ours_q.shape == (len(QUERIES), emb.dimension)
    assert np.abs(ours_q - ref_q).max() <= 1e-5
    assert np.abs(ours_p - ref_p).max() <= 1e-5


def test_token_ids_match_transcription(tiny_dir: Path) -> None:
    """Beyond vectors: the exact ids, including FlagEmbedding's decode round trip."""
    from tests.bge_icl.cases import NOTEBOOK_EXAMPLES, WEB

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    emb = ICLEmbedder(
        str(tiny_dir),
        examples_for_task=NOTEBOOK_EXAMPLES,
        query_instruction_for_retrieval=WEB,
        devices="cpu",
        query_max_length=24,
    )
    prefix = emb.prefix
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = emb.tokenize_queries(QUERIES).ids
    texts = [f"<instruct>{WEB}\n<query>{q}" for q in QUERIES]
    cut = tok(texts, truncation=True, max_length=24 - 1 - 4, add_special_tokens=False)["input_ids"]
    expected = tok([prefix + d + "\n<response>" for d in tok.batch_decode(cut)])["input_ids"]
    assert ours == expected
    assert all(ids[-1] == tok.eos_token_id for ids in ours)
