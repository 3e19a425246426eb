"""The shared-prefix key/value cache gives the same vectors as running the whole prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import AutoTokenizer

from bge_icl import ICLEmbedder
from tests.bge_icl.cases import LONG_QUERY, NO_INSTRUCT_EXAMPLES, QUERIES, UNICODE, WEB
from tests.bge_icl.flag_reference import _prefix
from tests.conftest import NOTEBOOK_EXAMPLES

LENGTHS = ["x", "summit define", "how much protein should a female eat", LONG_QUERY[:200], LONG_QUERY, *UNICODE, ""]


def _pair(tiny_dir: Path, **kwargs: object) -> tuple[ICLEmbedder, ICLEmbedder]:
    common = {"devices": "cpu", "dtype": "float32", "on_truncation": "ignore", **kwargs}  # exact: within 1e-5
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


# Query texts whose first characters could merge with the end of the prefix, if the prefix were cut too late.
BOUNDARY = ["a", "1", "The", ".", "'s", "ing", " leading space", "\nnewline first", "\u2581x", "<query>x", *UNICODE, ""]
EXAMPLES_FORMAT = "<instruct>{}\n<query>{}\n<response>{}"


@pytest.mark.parametrize(
    ("examples", "instruction", "template"),
    [
        (NOTEBOOK_EXAMPLES, WEB, "<instruct>{}\n<query>{}"),
        (NO_INSTRUCT_EXAMPLES, WEB, "<instruct>{}\n<query>{}"),
        (NOTEBOOK_EXAMPLES, None, "<instruct>{}\n<query>{}"),
        (None, WEB, "<instruct>{}\n<query>{}"),
        (NOTEBOOK_EXAMPLES, WEB, "{}\nQuery: {}"),
    ],
    ids=["instruction", "examples-without-instruct", "no-instruction", "zero-shot", "template-without-special-tokens"],
)
def test_cached_prefix_ends_where_the_query_text_begins(
    tiny_dir: Path, examples: Any, instruction: str | None, template: str
) -> None:
    emb = ICLEmbedder(str(tiny_dir), devices="cpu", examples_for_task=examples,
                      query_instruction_for_retrieval=instruction, query_instruction_format=template)  # fmt: skip
    hf = AutoTokenizer.from_pretrained(str(tiny_dir))
    P = emb.prefix_length
    assert P is not None and emb.prefix_ids is not None

    def round_trip(query: str) -> str:  # FlagEmbedding's decode round trip of the formatted query
        text = query if instruction is None else template.format(instruction, query)
        return str(hf.decode(hf(text, add_special_tokens=False)["input_ids"]))

    before = _prefix(examples, EXAMPLES_FORMAT, instruction) + ("" if instruction is None else round_trip(""))
    before_query = []  # per query: how many of its tokens lie wholly before the query text
    for query in BOUNDARY:
        # The reference: FlagEmbedding's prompt, tokenized whole; the query text starts at len(before).
        prompt = _prefix(examples, EXAMPLES_FORMAT, instruction) + round_trip(query) + "\n<response>"
        assert prompt.startswith(before), query
        reference = hf(prompt, return_offsets_mapping=True)
        assert emb.tokenize_queries([query]).ids[0] == reference["input_ids"], query  # the split changes no id
        ends = [end for _, end in reference["offset_mapping"][:-1]]  # EOS (the last) has no text
        before_query.append(sum(end <= len(before) for end in ends))
    assert P == min(before_query)  # every token before the query text is cached (where no query text merges in)
    emb.encode_queries(BOUNDARY)
    assert (emb.stats.prefix_hits, emb.stats.prefix_misses) == (len(BOUNDARY), 0)


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
    assert first is not None and all(k.dtype == emb.torch_dtype for k, _ in first.layers)
