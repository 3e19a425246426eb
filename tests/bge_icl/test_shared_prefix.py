"""Shared-prefix attention, prefix-reusing query tokenization and cost-based batching, against brute force.

Brute force here is the whole prompt run without any cache (``prefix_cache=False``), and FlagEmbedding's joint
tokenization of the whole prompt string.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bge_icl import ICLEmbedder
from bge_icl.batching import shared_prefix_cost
from bge_icl.cascade_attention import cascade_attention, cascade_attention_fused, has_fused_kernel
from bge_icl.choices import PrefixAttention
from tests.bge_icl.cases import LONG_QUERY, QUERIES, UNICODE, WEB
from tests.conftest import NOTEBOOK_EXAMPLES

SPECIALS = ["<query>", "<instruct>", "<response>", "<s>", "</s>", "\n", " ", "\\n", "{}", "▁"]


@pytest.fixture(scope="module")
def pair(tiny_dir: Path) -> tuple[ICLEmbedder, ICLEmbedder]:
    common: dict[str, Any] = {"examples_for_task": NOTEBOOK_EXAMPLES, "query_instruction_for_retrieval": WEB,
                              "devices": "cpu", "dtype": "float32", "on_truncation": "ignore",
                              "show_progress": False}  # fmt: skip
    return ICLEmbedder(str(tiny_dir), **common), ICLEmbedder(str(tiny_dir), prefix_cache=False, **common)


@pytest.fixture(scope="module")
def short_pair(pair: tuple[ICLEmbedder, ICLEmbedder]) -> tuple[ICLEmbedder, ICLEmbedder]:
    """Truncating limits: queries cut to 24 tokens (the instruction itself gets cut: the joint fallback runs)."""
    return pair[0].with_options(query_max_length=24), pair[1].with_options(query_max_length=24)


@pytest.mark.parametrize("kernel", ["explicit", "fused"])
def test_cascade_attention_equals_softmax_over_the_concatenation(kernel: str) -> None:
    if kernel == "fused" and not has_fused_kernel(torch.device("cpu")):
        pytest.skip("this torch has no fused CPU flash kernel")
    torch.manual_seed(0)
    B, Hq, Hkv, T, P, d = 3, 8, 2, 5, 7, 4
    q, k, v = torch.randn(B, Hq, T, d), torch.randn(B, Hkv, T, d), torch.randn(B, Hkv, T, d)
    pk, pv = torch.randn(Hkv, P, d), torch.randn(Hkv, P, d)
    lengths = torch.tensor([5, 3, 1])
    real = torch.arange(T)[None] < lengths[:, None]  # (B, T), right padding
    allowed = torch.ones(T, T, dtype=torch.bool).tril()[None] & real[:, None, :]
    if kernel == "fused":
        got = cascade_attention_fused(q, k, v, pk, pv, d**-0.5)
    else:
        got = cascade_attention(q, k, v, pk, pv, allowed, d**-0.5)
    # Brute force: repeat the KV heads, concatenate prefix and tail, one masked softmax.
    keys = torch.cat([pk[None].expand(B, -1, -1, -1), k], dim=2).repeat_interleave(Hq // Hkv, dim=1)
    values = torch.cat([pv[None].expand(B, -1, -1, -1), v], dim=2).repeat_interleave(Hq // Hkv, dim=1)
    mask = torch.cat([torch.ones(B, T, P, dtype=torch.bool), allowed], dim=2)[:, None]  # (B, 1, T, P + T)
    scores = (q @ keys.transpose(-1, -2)) * d**-0.5
    want = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ values
    assert torch.allclose(got[real[:, None, :].expand(B, Hq, T)], want[real[:, None, :].expand(B, Hq, T)], atol=1e-6)


@pytest.mark.parametrize("attention", ["shared-explicit", "shared", "auto"])
@pytest.mark.parametrize("kind", ["short", "truncated"])
def test_shared_prefix_vectors_equal_the_whole_prompt(
    pair: tuple[ICLEmbedder, ICLEmbedder], short_pair: tuple[ICLEmbedder, ICLEmbedder], kind: str, attention: str
) -> None:
    cached, full = pair if kind == "short" else short_pair
    cached = cached.with_options(prefix_attention=attention)
    best = "fused" if has_fused_kernel(cached.device) else "explicit"  # on the CPU: fused
    expected = {"shared-explicit": (PrefixAttention.SHARED_EXPLICIT, "explicit"),
                "shared": (PrefixAttention.SHARED, best), "auto": (PrefixAttention.SHARED, best)}  # fmt: skip
    assert (cached.forward_path.attention, cached.forward_path.kernel) == expected[attention]
    texts = [*QUERIES, *UNICODE, LONG_QUERY, "x", "x " * 40]
    hits = cached.stats.prefix_hits
    delta = np.abs(cached.encode_queries(texts) - full.encode_queries(texts)).max()
    assert delta <= 1e-5
    assert cached.stats.prefix_hits > hits  # the shared-prefix path really ran


def test_the_prefix_is_never_copied_per_row(
    pair: tuple[ICLEmbedder, ICLEmbedder], monkeypatch: pytest.MonkeyPatch
) -> None:
    import bge_icl.forward as forward

    def no_copies(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the copy path (a DynamicCache of B x P keys/values) ran")

    monkeypatch.setattr(forward, "new_cache", no_copies)
    cached, full = pair
    np.testing.assert_allclose(cached.encode_queries(QUERIES * 20), full.encode_queries(QUERIES * 20), atol=1e-5)


def test_the_copy_path_stays_available_and_equal(pair: tuple[ICLEmbedder, ICLEmbedder]) -> None:
    copy_path = pair[0].with_options(prefix_attention="copy")
    assert copy_path.forward_path.attention is PrefixAttention.COPY and copy_path.forward_path.kernel is None
    hits = copy_path.stats.prefix_hits
    np.testing.assert_allclose(copy_path.encode_queries(QUERIES), pair[1].encode_queries(QUERIES), atol=1e-5)
    assert copy_path.stats.prefix_hits == hits + len(QUERIES)  # the copy path really ran


PIECES = st.lists(st.sampled_from([*SPECIALS, "a", "é", "😀"]), max_size=12).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.one_of(st.text(max_size=80), PIECES))
def test_prefix_reusing_tokenization_equals_joint_tokenization(
    pair: tuple[ICLEmbedder, ICLEmbedder], short_pair: tuple[ICLEmbedder, ICLEmbedder], query: str
) -> None:
    try:
        query.encode("utf-8")
    except UnicodeEncodeError:
        return  # lone surrogates are rejected before tokenization (tests/bge_icl/test_options.py)
    for cached, joint in (pair, short_pair):
        a, b = cached.tokenize_queries([query]), joint.tokenize_queries([query])
        assert a.ids == b.ids and a.truncated == b.truncated


def test_cached_queries_are_batched_by_cost_not_by_rows(pair: tuple[ICLEmbedder, ICLEmbedder]) -> None:
    assert pair[0].with_options(batch_size=None).options.batch_size is None  # default: 32 rows on CPU, budget on GPU
    cached = pair[0].with_options(batch_size=100_000, max_batch_tokens=16384)  # the token budget alone decides
    cached.encode_queries(["warm up"])  # builds the prefix cache (one forward pass of one row)
    rows: list[int] = []
    hook = cached.replicas[0].model.embed_tokens.register_forward_hook(lambda m, i, o: rows.append(o.shape[0]))
    try:
        cached.encode_queries([f"query number {i}" for i in range(300)])
    finally:
        hook.remove()
    assert max(rows) > 100  # hundreds of short queries per forward pass (the copy path would fit about 50)
    assert sum(rows) == 300


def test_row_cost_counts_tokens_run_and_prefix_attention() -> None:
    cost = shared_prefix_cost(type("C", (), {"num_attention_heads": 32, "intermediate_size": 14336})())
    assert cost(30, 500) == 30 + -(-30 * 32 * 500 // 14336)  # how passes use it: tests/bge_icl/test_scheduler.py


def test_prefix_attention_is_checked_and_shared_needs_the_layout(pair: tuple[ICLEmbedder, ICLEmbedder]) -> None:
    from bge_icl.errors import OptionValueError
    from bge_icl.forward import ForwardPath

    with pytest.raises(OptionValueError, match=re.escape(
            "prefix_attention='flash' is not supported; valid: ('auto', 'shared', 'shared-explicit', 'copy')")) as info:
        pair[0].with_options(prefix_attention="flash")
    assert (info.value.option, info.value.value) == ("prefix_attention", "flash")
    not_a_decoder = torch.nn.Linear(2, 2)
    assert ForwardPath.from_option("auto", not_a_decoder).attention is PrefixAttention.COPY
    with pytest.raises(OptionValueError, match=re.escape("prefix_attention='shared' needs the Llama/Mistral decoder "
                                                         "layout, which Linear does not have; use 'auto' or 'copy'")):
        ForwardPath.from_option("shared", not_a_decoder)
    assert pair[0].fingerprint("queries") == pair[0].with_options(prefix_attention="copy").fingerprint("queries")
