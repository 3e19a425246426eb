"""The shared-prefix key/value cache gives the same vectors as running the whole prompt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bge_icl import ICLEmbedder
from tests.bge_icl.cases import LONG_QUERY, NO_INSTRUCT_EXAMPLES, QUERIES, UNICODE, WEB
from tests.conftest import NOTEBOOK_EXAMPLES

LENGTHS = ["x", "summit define", "how much protein should a female eat", LONG_QUERY[:200], LONG_QUERY, *UNICODE, ""]


def _pair(tiny_dir: Path, **kwargs: object) -> tuple[ICLEmbedder, ICLEmbedder]:
    common = {"devices": "cpu", "on_truncation": "ignore", **kwargs}
    return ICLEmbedder(str(tiny_dir), prefix_cache=True, **common), ICLEmbedder(  # type: ignore[arg-type]
        str(tiny_dir),
        prefix_cache=False,
        **common,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("examples", "instruction", "qmax"),
    [
        (NOTEBOOK_EXAMPLES, WEB, 512),
        (NOTEBOOK_EXAMPLES, WEB, 24),
        (NO_INSTRUCT_EXAMPLES, WEB, 512),
        (NOTEBOOK_EXAMPLES, None, 512),
        (None, WEB, 512),
    ],
    ids=["notebook", "truncated-queries", "example-without-instruct", "no-instruction", "zero-shot"],
)
def test_cache_equals_full_recomputation(tiny_dir: Path, examples: object, instruction: str | None, qmax: int) -> None:
    cached, full = _pair(
        tiny_dir, examples_for_task=examples, query_instruction_for_retrieval=instruction, query_max_length=qmax
    )
    texts = LENGTHS + QUERIES
    delta = np.abs(cached.encode_queries(texts) - full.encode_queries(texts)).max()
    assert delta <= 1e-5
    assert cached.cache_stats["hits"] == len(texts)  # every query really ran on the cache
    assert full.cache_stats == {"hits": 0, "misses": 0}


def test_cached_prefix_ends_at_the_query_token(tiny_dir: Path) -> None:
    cached, _ = _pair(tiny_dir, examples_for_task=NOTEBOOK_EXAMPLES, query_instruction_for_retrieval=WEB)
    cached.encode_queries(["warm up"])
    prefix = cached._prefix
    assert prefix is not None
    assert prefix.ids[0] == 1 and prefix.ids[-1] == 32001  # BOS ... <query>
    full_ids = cached.tokenize_queries(["summit define"]).ids[0]
    assert tuple(full_ids[: prefix.length]) == prefix.ids
    assert len(prefix.layers) == 2 and prefix.layers[0][0].shape[-2] == prefix.length


def test_queries_that_do_not_start_with_the_prefix_fall_back(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached, full = _pair(tiny_dir, examples_for_task=NOTEBOOK_EXAMPLES, query_instruction_for_retrieval=WEB)
    cached.encode_queries(["warm up"])
    assert cached._prefix is not None
    # Pretend the prefix ends in a token no query has: every query must take the whole-prompt path.
    bogus = [*cached._prefix.ids[:-1], 5]
    monkeypatch.setattr(cached, "_prefix_ids_value", bogus)
    before = dict(cached.cache_stats)
    delta = np.abs(cached.encode_queries(QUERIES) - full.encode_queries(QUERIES)).max()
    assert delta <= 1e-5
    assert cached.cache_stats["hits"] == before["hits"]
    assert cached.cache_stats["misses"] == before["misses"] + len(QUERIES)


def test_sequences_longer_than_the_sliding_window_fall_back(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached, full = _pair(tiny_dir, examples_for_task=NOTEBOOK_EXAMPLES, query_instruction_for_retrieval=WEB)
    cached.encode_queries(["warm up"])
    assert cached._prefix is not None
    monkeypatch.setattr(cached._loaded.model.config, "sliding_window", cached._prefix.length + 12)
    cached.encode_queries(["short", LONG_QUERY])
    assert cached.cache_stats["misses"] == 1  # the long one
    monkeypatch.undo()
    np.testing.assert_allclose(cached.encode_queries([LONG_QUERY]), full.encode_queries([LONG_QUERY]), atol=1e-5)


def test_with_examples_gets_its_own_prefix(tiny_dir: Path) -> None:
    a = ICLEmbedder(
        str(tiny_dir), examples_for_task=NOTEBOOK_EXAMPLES, query_instruction_for_retrieval=WEB, devices="cpu"
    )
    b = a.with_examples(NOTEBOOK_EXAMPLES[:1])
    a.encode_queries(["q"])
    b.encode_queries(["q"])
    assert a._prefix is not None and b._prefix is not None
    assert a._prefix.length > b._prefix.length
    assert a._loaded is b._loaded


def test_cache_is_built_once_and_model_is_untouched(tiny_dir: Path) -> None:
    emb = ICLEmbedder(
        str(tiny_dir), examples_for_task=NOTEBOOK_EXAMPLES, query_instruction_for_retrieval=WEB, devices="cpu"
    )
    emb.encode_queries(["one"])
    first = emb._prefix
    emb.encode_queries(["two", "three"])
    assert emb._prefix is first
    assert first is not None and all(k.dtype == torch.float32 for k, _ in first.layers)
