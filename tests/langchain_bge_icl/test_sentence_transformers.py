"""BgeIclEmbeddings on an already loaded SentenceTransformer: its weights, sentence-transformers' passage vectors."""

from __future__ import annotations

from typing import Any

import numpy as np

from bge_icl import ICLEmbedder
from langchain_bge_icl import BgeIclEmbeddings
from tests.conftest import NOTEBOOK_DOCUMENTS, NOTEBOOK_EXAMPLES, NOTEBOOK_QUERIES


def test_built_from_a_sentence_transformer(st_model: Any) -> None:
    core = ICLEmbedder.from_sentence_transformer(st_model, examples_for_task=NOTEBOOK_EXAMPLES)
    embeddings = BgeIclEmbeddings.from_embedder(core)
    assert embeddings.embedder.replicas[0].model is st_model[0].auto_model  # no second copy of the weights
    reference = st_model.encode(NOTEBOOK_DOCUMENTS, normalize_embeddings=True)
    np.testing.assert_allclose(embeddings.embed_documents(NOTEBOOK_DOCUMENTS), reference, atol=1e-5)
    np.testing.assert_allclose(embeddings.embed_query(NOTEBOOK_QUERIES[0]), core.encode_query(NOTEBOOK_QUERIES[0]),
                               atol=1e-6)  # fmt: skip
    assert len(embeddings.examples_for_task or ()) == len(NOTEBOOK_EXAMPLES)  # the adapter reports the options

