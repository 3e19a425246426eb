"""The shared-prefix key/value cache gives the same vectors as running the whole prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    assert cached.stats.prefix_hits == len(texts)  # every query really ran on the cache
    assert (full.stats.prefix_hits, full.stats.prefix_misses, full.stats.prefix_builds) == (0, 0, 0)


def test_cached_prefix_ends_at_the_query_token(tiny_dir: Path) -> None:
    cached, _ = _pair(tiny_dir, examples_for_task=NOTEBOOK_EXAMPLES, query_instruction_for_retrieval=WEB)
    cached.encode_queries(["warm up"])
    prefix = cached.prefix_kv[0]
    assert cached.prefix_ids == prefix.ids
    assert prefix.ids[0] == 1 and prefix.ids[-1] == 32001  # BOS ... <query>
    full_ids = cached.tokenize_queries(["summit define"]).ids[0]
    assert tuple(full_ids[: prefix.length]) == prefix.ids
    assert len(prefix.layers) == 2 and prefix.layers[0][0].shape[-2] == prefix.length


def test_queries_that_do_not_start_with_the_prefix_fall_back(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached, full = _pair(tiny_dir, examples_for_task=NOTEBOOK_EXAMPLES, query_instruction_for_retrieval=WEB)
    cached.encode_queries(["warm up"])
    P = cached.prefix_length
    assert P is not None
    # Queries whose ids differ from the cached prefix in its last token (<query>) must take the whole-prompt path.
    for embedder in (cached, full):
        real = embedder.tokenize_queries

        def altered(queries: list[str], max_length: int | None = None, real: Any = real) -> Any:
            out = real(queries, max_length)
            return type(out)([[*ids[: P - 1], 5, *ids[P:]] for ids in out.ids], out.truncated)

        monkeypatch.setattr(embedder, "tokenize_queries", altered)
    before = cached.stats
    delta = np.abs(cached.encode_queries(QUERIES) - full.encode_queries(QUERIES)).max()
    assert delta <= 1e-5
    assert cached.stats.prefix_hits == before.prefix_hits
    assert cached.stats.prefix_misses == before.prefix_misses + len(QUERIES)


def test_sequences_longer_than_the_sliding_window_fall_back(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached, full = _pair(tiny_dir, examples_for_task=NOTEBOOK_EXAMPLES, query_instruction_for_retrieval=WEB)
    cached.encode_queries(["warm up"])
    assert cached.prefix_length is not None
    monkeypatch.setattr(cached.replicas[0].model.config, "sliding_window", cached.prefix_length + 12)
    cached.encode_queries(["short", LONG_QUERY])
    assert cached.stats.prefix_misses == 1  # the long one
    monkeypatch.undo()
    np.testing.assert_allclose(cached.encode_queries([LONG_QUERY]), full.encode_queries([LONG_QUERY]), atol=1e-5)


def test_with_examples_gets_its_own_prefix(tiny_dir: Path) -> None:
    a = ICLEmbedder(
        str(tiny_dir), examples_for_task=NOTEBOOK_EXAMPLES, query_instruction_for_retrieval=WEB, devices="cpu"
    )
    b = a.with_examples(NOTEBOOK_EXAMPLES[:1])
    a.encode_queries(["q"])
    b.encode_queries(["q"])
    assert a.prefix_length is not None and b.prefix_length is not None
    assert a.prefix_length > b.prefix_length
    assert a.stats.prefix_builds == b.stats.prefix_builds == 1
    assert a.replicas[0] is b.replicas[0]


def test_cache_is_built_once_and_model_is_untouched(tiny_dir: Path) -> None:
    emb = ICLEmbedder(
        str(tiny_dir), examples_for_task=NOTEBOOK_EXAMPLES, query_instruction_for_retrieval=WEB, devices="cpu"
    )
    emb.encode_queries(["one"])
    first = emb.prefix_kv[0]
    emb.encode_queries(["two", "three"])
    assert emb.prefix_kv[0] is first and emb.stats.prefix_builds == 1
    assert first is not None and all(k.dtype == torch.float32 for k, _ in first.layers)
