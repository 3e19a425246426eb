"""sentence-transformers interop: the same checkpoint through ``SentenceTransformer`` and through bge-icl.

Where both pipelines agree (passages within 512 tokens, a tokenizer that appends EOS) the vectors are equal; where
they don't (longer passages, a tokenizer without EOS) the tests show the difference that docs/sentence-transformers.md
explains. ``SentenceTransformer.encode`` is the reference here, never bge-icl's own earlier output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bge_icl import ICLEmbedder
from tests.bge_icl.cases import LONG_PASSAGE, UNICODE, WEB
from tests.conftest import NOTEBOOK_DOCUMENTS, NOTEBOOK_EXAMPLES, NOTEBOOK_QUERIES

st = pytest.importorskip("sentence_transformers")
PASSAGES = [*NOTEBOOK_DOCUMENTS, *UNICODE, "short"]


@pytest.fixture(scope="module")
def wrapped(st_model: Any) -> ICLEmbedder:
    return ICLEmbedder.from_sentence_transformer(
        st_model, examples_for_task=NOTEBOOK_EXAMPLES, query_instruction_for_retrieval=WEB, on_truncation="ignore"
    )


def _max_diff(a: Any, b: Any) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).max())


def test_passages_equal_sentence_transformers_encode(st_model: Any, wrapped: ICLEmbedder, tiny_dir: Path) -> None:
    reference = st_model.encode(PASSAGES, normalize_embeddings=True)  # (N, 64)
    assert _max_diff(wrapped.encode_document(PASSAGES), reference) <= 1e-5
    loaded = ICLEmbedder(str(tiny_dir), devices="cpu", dtype="float32")  # the same weights, however they were loaded
    assert _max_diff(loaded.encode_corpus(PASSAGES), reference) <= 1e-5


def _st_forward(model: Any, ids: list[list[int]]) -> np.ndarray:
    """The SentenceTransformer's own modules on the given token ids (left-padded), normalized: (N, dim)."""
    width = max(map(len, ids))
    features = dict(model.tokenize(["x"]))  # sentence-transformers 6 adds keys besides the ids and mask
    features["input_ids"] = torch.tensor([[0] * (width - len(x)) + x for x in ids])
    features["attention_mask"] = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
    with torch.inference_mode():
        out = model(features)["sentence_embedding"]
    return torch.nn.functional.normalize(out.float(), dim=-1).numpy()


def test_icl_queries_are_the_sentence_transformer_run_on_flagembeddings_ids(st_model: Any,
                                                                          wrapped: ICLEmbedder) -> None:
    ids = wrapped.tokenize_queries(NOTEBOOK_QUERIES).ids  # FlagICLModel's ids (tests/bge_icl/test_parity_*)
    assert _max_diff(wrapped.encode_query(NOTEBOOK_QUERIES), _st_forward(st_model, ids)) <= 1e-5


def test_sentence_transformers_cannot_express_the_icl_query(st_model: Any, wrapped: ICLEmbedder) -> None:
    ours = wrapped.encode_query(NOTEBOOK_QUERIES)
    # It only prepends a prompt: no suffix, no examples -> other vectors.
    plain = st_model.encode(NOTEBOOK_QUERIES, prompt=f"<instruct>{WEB}\n<query>", normalize_embeddings=True)
    assert _max_diff(ours, plain) > 1e-2
    # Even the whole ICL text as input is tokenized in one piece, while FlagEmbedding tokenizes the query block
    # apart from the prefix, which adds "▁" tokens (28705), e.g. after the query's <instruct>: other ids and vectors.
    whole = [f"{wrapped.prefix}<instruct>{WEB}\n<query>{q}\n<response>" for q in NOTEBOOK_QUERIES]
    assert _max_diff(ours, st_model.encode(whole, normalize_embeddings=True)) > 1e-3
    theirs = st_model.tokenizer(whole[0])["input_ids"]
    flag = wrapped.tokenize_queries(NOTEBOOK_QUERIES[:1]).ids[0]
    at = next(i for i, (a, b) in enumerate(zip(flag, theirs, strict=False)) if a != b)
    assert flag[:at].count(32000) == len(NOTEBOOK_EXAMPLES) + 1  # the query's <instruct>, after the examples'
    assert flag[at - 1 : at + 1] == [32000, 28705]
    assert [t for t in flag if t != 28705] == [t for t in theirs if t != 28705]


def test_the_weights_are_the_sentence_transformers_own(st_model: Any, wrapped: ICLEmbedder) -> None:
    auto = st_model[0].auto_model
    assert wrapped.replicas[0].model is auto
    assert wrapped.device == st_model.device
    assert wrapped.torch_dtype == next(auto.parameters()).dtype
    assert wrapped.with_examples(None).replicas[0].model is auto  # copies share them too
    assert wrapped.with_options(passage_max_length=64).replicas[0].model is auto


def test_passages_past_512_tokens_differ_until_the_limits_agree(st_model: Any, wrapped: ICLEmbedder) -> None:
    assert st_model.max_seq_length == 32768  # the hub config's; bge-icl (like FlagEmbedding) cuts passages at 512
    assert len(wrapped.tokenize_corpus([LONG_PASSAGE], max_length=10**6).ids[0]) > 512
    ours = wrapped.encode_document([LONG_PASSAGE])
    assert _max_diff(ours, st_model.encode([LONG_PASSAGE], normalize_embeddings=True)) > 1e-3
    longer = wrapped.with_options(passage_max_length=32768)
    assert _max_diff(longer.encode_document([LONG_PASSAGE]), st_model.encode([LONG_PASSAGE],
                                                                             normalize_embeddings=True)) <= 1e-5
    st_model.max_seq_length = 512
    try:
        assert _max_diff(ours, st_model.encode([LONG_PASSAGE], normalize_embeddings=True)) <= 1e-5
    finally:
        st_model.max_seq_length = 32768


def test_a_tokenizer_without_eos_pools_another_token_in_sentence_transformers(tiny_no_eos_dir: Path) -> None:
    model = st.SentenceTransformer(str(tiny_no_eos_dir), device="cpu")
    emb = ICLEmbedder.from_sentence_transformer(model)
    ours = emb.encode_document(NOTEBOOK_DOCUMENTS)  # bge-icl appends EOS whatever the tokenizer does
    assert _max_diff(ours, model.encode(NOTEBOOK_DOCUMENTS, normalize_embeddings=True)) > 1e-2  # the last word's
    with_eos = model.encode([d + "</s>" for d in NOTEBOOK_DOCUMENTS], normalize_embeddings=True)
    assert _max_diff(ours, with_eos) <= 1e-5


def test_encode_query_and_document_equal_the_flagembedding_names(wrapped: ICLEmbedder) -> None:
    assert _max_diff(wrapped.encode_query(NOTEBOOK_QUERIES), wrapped.encode_queries(NOTEBOOK_QUERIES)) == 0
    assert _max_diff(wrapped.encode_document(PASSAGES), wrapped.encode_corpus(PASSAGES)) == 0
    assert wrapped.encode_query(NOTEBOOK_QUERIES[0]).shape == (64,)
    tensor = wrapped.encode_document(PASSAGES, convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.shape == (len(PASSAGES), 64)
    rows = wrapped.encode_document(PASSAGES, convert_to_numpy=False)
    assert isinstance(rows, list) and len(rows) == len(PASSAGES) and rows[0].shape == (64,)
    single = wrapped.encode_document(PASSAGES[0], convert_to_numpy=False)
    assert isinstance(single, torch.Tensor) and single.shape == (64,)
    same = wrapped.encode_query(NOTEBOOK_QUERIES, batch_size=1, show_progress_bar=False, normalize_embeddings=True)
    assert _max_diff(same, wrapped.encode_queries(NOTEBOOK_QUERIES)) <= 1e-6


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"prompt": "query: "}, TypeError, r"prompt= is not taken here: bge-icl builds the query prompt"),
        ({"prompt_name": "query"}, TypeError, r"prompt_name= is not taken here"),
        ({"truncate_dim": 8}, TypeError, r"truncate_dim= is not taken here: .*with_options\(truncate_dim=\.\.\.\)"),
        ({"device": "cuda"}, TypeError, r"device= is not taken here: the device is fixed"),
        ({"chunk_size": 8}, TypeError, r"unknown argument\(s\) \['chunk_size'\]; valid: \['batch_size'"),
        ({"normalize_embeddings": False}, ValueError,
         r"normalize_embeddings=False differs from this embedder's option normalize_embeddings=True"),
        ({"precision": "fp8"}, ValueError, r"precision='fp8' is not supported; valid: \('float32', 'int8'"),
    ],
)
def test_sentence_transformers_arguments_bge_icl_does_not_take(wrapped: ICLEmbedder, kwargs: dict[str, Any],
                                                              error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        wrapped.encode_query(NOTEBOOK_QUERIES, **kwargs)


def test_refuses_a_model_that_does_not_pool_the_last_token(tiny_dir: Path) -> None:
    transformer = st.models.Transformer(str(tiny_dir))
    mean = st.SentenceTransformer(modules=[transformer, st.models.Pooling(64, "mean")], device="cpu")
    with pytest.raises(ValueError, match=r"pools with 'mean'; .*only pooling_mode 'lasttoken' can be wrapped"):
        ICLEmbedder.from_sentence_transformer(mean)


def test_refuses_modules_after_pooling_that_bge_icl_does_not_run(tiny_dir: Path) -> None:
    transformer = st.models.Transformer(str(tiny_dir))
    modules = [transformer, st.models.Pooling(64, "lasttoken"), st.models.Dense(64, 8), st.models.Normalize()]
    with pytest.raises(ValueError, match=r"modules after Pooling that bge-icl does not run: \['Dense'\]"):
        ICLEmbedder.from_sentence_transformer(st.SentenceTransformer(modules=modules, device="cpu"))


def test_a_normalize_module_is_fine(tiny_dir: Path) -> None:
    transformer = st.models.Transformer(str(tiny_dir))
    modules = [transformer, st.models.Pooling(64, "lasttoken"), st.models.Normalize()]
    model = st.SentenceTransformer(modules=modules, device="cpu")
    emb = ICLEmbedder.from_sentence_transformer(model)
    assert _max_diff(emb.encode_document(PASSAGES), model.encode(PASSAGES)) <= 1e-5


def test_refuses_what_is_not_a_sentence_transformer(tiny_dir: Path) -> None:
    with pytest.raises(TypeError, match=r"expects a loaded SentenceTransformer .*got str"):
        ICLEmbedder.from_sentence_transformer(str(tiny_dir))


@pytest.mark.parametrize("option", ["dtype", "devices", "model_name", "revision", "model", "model_name_or_path"])
def test_refuses_options_that_the_model_decides(st_model: Any, option: str) -> None:
    with pytest.raises(TypeError, match=rf"takes \['{option}'\] from the SentenceTransformer"):
        ICLEmbedder.from_sentence_transformer(st_model, **{option: "x"})
