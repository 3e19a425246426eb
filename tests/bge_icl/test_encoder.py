"""ICLEmbedder behaviour: shapes, batch invariance, EOS guarantee, sharing, truncation, OOM backoff."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bge_icl import ICLEmbedder, TruncationError, TruncationWarning
from tests.bge_icl.cases import LONG_PASSAGE, LONG_QUERY, PASSAGES, QUERIES, WEB
from tests.conftest import NOTEBOOK_EXAMPLES


def test_shapes_and_dtype(emb: ICLEmbedder) -> None:
    assert emb.dimension == 64
    assert emb.encode_queries(["q1", "q2"]).shape == (2, 64)
    assert emb.encode_corpus(["d1", "d2"]).dtype == np.float32
    single = emb.encode_queries("q1")
    assert single.shape == (64,)
    np.testing.assert_allclose(single, emb.encode_queries(["q1"])[0], atol=1e-6)
    assert emb.encode_corpus([]).shape == (0, 64)


def test_vectors_are_unit_norm_unless_disabled(tiny_dir: Path, emb: ICLEmbedder) -> None:
    np.testing.assert_allclose(np.linalg.norm(emb.encode_corpus(PASSAGES), axis=1), 1.0, atol=1e-5)
    raw = ICLEmbedder(str(tiny_dir), devices="cpu", dtype="float32", normalize_embeddings=False, on_truncation="ignore")
    vecs = raw.encode_corpus(PASSAGES)
    assert not np.allclose(np.linalg.norm(vecs, axis=1), 1.0)
    np.testing.assert_allclose(
        vecs / np.linalg.norm(vecs, axis=1, keepdims=True), emb.encode_corpus(PASSAGES), atol=1e-5
    )


def test_queries_and_passages_differ(emb: ICLEmbedder) -> None:
    assert not np.allclose(emb.encode_queries(["summit define"]), emb.encode_corpus(["summit define"]), atol=1e-3)


@pytest.mark.parametrize(("batch_size", "max_batch_tokens"), [(1, 10**6), (3, 10**6), (64, 200), (64, 10**6)])
def test_any_batch_composition_and_order_gives_same_vectors(
    tiny_dir: Path, emb: ICLEmbedder, batch_size: int, max_batch_tokens: int
) -> None:
    other = ICLEmbedder(
        str(tiny_dir),
        examples_for_task=NOTEBOOK_EXAMPLES,
        query_instruction_for_retrieval=WEB,
        devices="cpu",
        dtype="float32",
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
        on_truncation="ignore",
    )
    perm = np.random.default_rng(batch_size).permutation(len(QUERIES))
    base = emb.encode_queries(QUERIES)
    shuffled = other.encode_queries([QUERIES[i] for i in perm])
    assert np.abs(shuffled - base[perm]).max() <= 1e-5
    base_p = emb.encode_corpus(PASSAGES)
    each = np.stack([other.encode_corpus(p) for p in PASSAGES])
    assert np.abs(each - base_p).max() <= 1e-5


def test_eos_guarantee(tiny_dir: Path, tiny_no_eos_dir: Path) -> None:
    kwargs: dict[str, Any] = {
        "examples_for_task": NOTEBOOK_EXAMPLES,
        "query_instruction_for_retrieval": WEB,
        "devices": "cpu",
        "on_truncation": "ignore",
        "query_max_length": 40,
        "passage_max_length": 40,
    }
    normal, no_eos = ICLEmbedder(str(tiny_dir), **kwargs), ICLEmbedder(str(tiny_no_eos_dir), **kwargs)
    assert all(ids[-1] == 2 for ids in no_eos.tokenize_queries(QUERIES).ids + no_eos.tokenize_corpus(PASSAGES).ids)
    assert normal.tokenize_corpus(PASSAGES).ids == no_eos.tokenize_corpus(PASSAGES).ids
    assert np.abs(normal.encode_queries(QUERIES) - no_eos.encode_queries(QUERIES)).max() <= 1e-6
    assert np.abs(normal.encode_corpus(PASSAGES) - no_eos.encode_corpus(PASSAGES)).max() <= 1e-6


def test_with_examples_shares_the_model(emb: ICLEmbedder) -> None:
    zero = emb.with_examples(None)
    other = emb.with_examples(NOTEBOOK_EXAMPLES[:1])
    assert zero.replicas[0] is emb.replicas[0] is other.replicas[0]
    assert zero.prefix == "" and other.prefix.count("<response>") == 1
    q = ["how much protein should a female eat"]
    assert not np.allclose(zero.encode_queries(q), emb.encode_queries(q), atol=1e-4)
    np.testing.assert_allclose(zero.encode_corpus(q), emb.encode_corpus(q), atol=1e-6)


def test_same_settings_share_weights_across_instances(tiny_dir: Path, emb: ICLEmbedder) -> None:
    again = ICLEmbedder(str(tiny_dir), devices="cpu", dtype="float32")
    assert again.replicas[0] is emb.replicas[0]
    assert again.with_options(attn_implementation="eager").replicas[0] is not emb.replicas[0]
    assert again.with_options(dtype="bfloat16").replicas[0] is not emb.replicas[0]


def test_encode_never_moves_or_casts_the_model(emb: ICLEmbedder) -> None:
    params = next(emb.replicas[0].model.parameters())
    before = (params.device, params.dtype, params.data_ptr())
    emb.encode_queries(["x"])
    emb.encode_corpus(["y"])
    assert (params.device, params.dtype, params.data_ptr()) == before


def test_truncation_warns_once_per_call(emb: ICLEmbedder, tiny_dir: Path) -> None:
    warner = emb.with_options(on_truncation="warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warner.encode_corpus([LONG_PASSAGE, "short", LONG_PASSAGE])
    messages = [str(w.message) for w in caught if issubclass(w.category, TruncationWarning)]
    assert messages == ["2 of 3 passages exceeded passage_max_length=512 tokens and were truncated (first: item 0)"]


def test_truncation_error_mode(tiny_dir: Path) -> None:
    strict = ICLEmbedder(str(tiny_dir), devices="cpu", on_truncation="error", query_max_length=16)
    with pytest.raises(TruncationError, match=re.escape("1 of 2 queries exceeded query_max_length=16 tokens")):
        strict.encode_queries(["short", LONG_QUERY])
    assert strict.encode_queries(["short"]).shape == (1, 64)


class _OOMAbove(torch.nn.Module):
    """Wraps a model and raises torch.OutOfMemoryError for batches with more than ``limit`` padded tokens."""

    def __init__(self, model: Any, limit: int) -> None:
        super().__init__()
        self.inner, self.limit, self.calls, self.config = model, limit, [], model.config

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        self.calls.append(tuple(input_ids.shape))
        if input_ids.numel() > self.limit:
            raise torch.OutOfMemoryError(f"fake OOM for {tuple(input_ids.shape)}")
        return self.inner(input_ids=input_ids, **kwargs)


def test_oom_backoff_halves_budget_and_keeps_order(
    tiny_dir: Path, emb: ICLEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [f"passage number {i} " * (1 + i % 7) for i in range(40)]
    expected = emb.encode_corpus(texts)
    fresh = ICLEmbedder(str(tiny_dir), devices="cpu", dtype="float32", batch_size=64, attn_implementation="eager")
    wrapper = _OOMAbove(fresh.replicas[0].model, limit=120)
    monkeypatch.setattr(fresh.replicas[0], "model", wrapper)
    got = fresh.encode_corpus(texts)
    assert np.abs(got - expected).max() <= 1e-5
    failed = [s for s in wrapper.calls if s[0] * s[1] > 120]
    assert failed, "the wrapper never injected an OOM"
    # After the first failure, the smaller budget is kept: at most one failure per halving.
    assert len(failed) <= 6


def test_oom_on_a_single_sequence_reraises_with_advice(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = ICLEmbedder(str(tiny_dir), devices="cpu", attn_implementation="eager")
    monkeypatch.setattr(fresh.replicas[0], "model", _OOMAbove(fresh.replicas[0].model, limit=3))
    with pytest.raises(torch.OutOfMemoryError, match=r"single sequence of \d+ tokens; lower query_max_length"):
        fresh.encode_corpus(["a long enough passage"])
    monkeypatch.undo()
    assert fresh.encode_corpus(["still usable"]).shape == (1, 64)


def test_per_call_override_and_check_truncation(tiny_dir: Path) -> None:
    strict = ICLEmbedder(str(tiny_dir), devices="cpu", on_truncation="error", passage_max_length=16)
    texts = ["short", LONG_PASSAGE, "short", LONG_PASSAGE]
    with pytest.raises(TruncationError, match=re.escape("2 of 4 passages exceeded passage_max_length=16 tokens")):
        strict.check_truncation(texts, "passages")
    assert strict.encode_corpus(texts, on_truncation="ignore").shape == (4, 64)
    lenient = ICLEmbedder(str(tiny_dir), devices="cpu", passage_max_length=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert lenient.check_truncation(texts, "passages") == [1, 3]
    assert [str(w.message) for w in caught] == [
        "2 of 4 passages exceeded passage_max_length=16 tokens and were truncated (first: item 1)"
    ]
    with pytest.raises(ValueError, match=re.escape("on_truncation='loud' is not supported")):
        lenient.encode_corpus(texts, on_truncation="loud")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape("kind='docs' is not supported; valid: ('queries', 'passages')")):
        lenient.check_truncation(texts, "docs")  # type: ignore[arg-type]
