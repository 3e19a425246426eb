"""bfloat16 on the CPU (``dtype="auto"`` where the CPU has bf16 units): every forward path against the whole prompt in
bfloat16 and against float32.

Tolerances (docs/cpu.md), measured on the tiny checkpoint: a bf16 path against the whole prompt in bf16 differs by at
most 3.9e-3 per component (copied prefix: 0, shared fused: 2.2e-3, shared explicit: 3.9e-3), against float32 by at most
3.2e-3, every cosine >= 0.99998. The tests hold 1e-2 and 0.9999, and that no path strays further from float32 than
twice the whole prompt's own bf16 rounding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bge_icl import ICLEmbedder
from bge_icl.loading import cpu_has_bf16_units
from tests.bge_icl.cases import LONG_QUERY, PASSAGES, QUERIES, WEB
from tests.conftest import NOTEBOOK_EXAMPLES

BF16_TOLERANCE = 1e-2
"""Most a vector component of a bf16 path differs from the whole prompt in bf16, or from float32."""
BF16_COSINE = 0.9999
"""Least cosine between a bf16 path's vector and the whole prompt's in bf16, or float32's."""
TEXTS = [*QUERIES, LONG_QUERY[:200], "x"]


@pytest.fixture(scope="module")
def references(tiny_dir: Path) -> dict[str, np.ndarray]:
    """Queries and passages through the whole prompt, in float32 and in bfloat16."""
    common: dict[str, Any] = {"examples_for_task": NOTEBOOK_EXAMPLES, "query_instruction_for_retrieval": WEB,
                              "devices": "cpu", "on_truncation": "ignore", "prefix_cache": False}  # fmt: skip
    f32 = ICLEmbedder(str(tiny_dir), dtype="float32", **common)
    bf16 = ICLEmbedder(str(tiny_dir), dtype="bfloat16", **common)
    assert bf16.torch_dtype == torch.bfloat16
    return {
        "float32": f32.encode_queries(TEXTS),
        "bfloat16": bf16.encode_queries(TEXTS),
        "float32 passages": f32.encode_corpus(PASSAGES),
        "bfloat16 passages": bf16.encode_corpus(PASSAGES),
    }


def _agree(a: np.ndarray, b: np.ndarray) -> None:
    assert np.abs(a - b).max() <= BF16_TOLERANCE
    assert (a * b).sum(axis=1).min() >= BF16_COSINE  # unit vectors: the row-wise dot product is the cosine


def test_the_whole_prompt_in_bf16_agrees_with_float32(references: dict[str, np.ndarray]) -> None:
    _agree(references["bfloat16"], references["float32"])
    _agree(references["bfloat16 passages"], references["float32 passages"])
    assert not np.array_equal(references["bfloat16"], references["float32"])  # it really ran in bf16


@pytest.mark.parametrize("prefix_attention", ["shared", "shared-explicit", "copy"])
def test_each_prefix_path_in_bf16_agrees_with_the_whole_prompt(
    tiny_dir: Path, references: dict[str, np.ndarray], prefix_attention: str
) -> None:
    emb = ICLEmbedder(str(tiny_dir), dtype="bfloat16", prefix_attention=prefix_attention, devices="cpu",
                      examples_for_task=NOTEBOOK_EXAMPLES, query_instruction_for_retrieval=WEB,
                      on_truncation="ignore")  # fmt: skip
    got = emb.encode_queries(TEXTS)
    assert emb.stats.prefix_hits == len(TEXTS)  # every query ran on the cached prefix
    _agree(got, references["bfloat16"])
    _agree(got, references["float32"])
    whole_error = np.abs(references["bfloat16"] - references["float32"]).max()
    assert np.abs(got - references["float32"]).max() <= 2 * whole_error


def test_vectors_and_the_head_stay_float32_in_bf16(tiny_dir: Path) -> None:
    emb = ICLEmbedder(str(tiny_dir), dtype="bfloat16", devices="cpu", convert_to_numpy=False)
    out = emb.encode_corpus(PASSAGES[:2])
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.norm(dim=1).numpy(), 1.0, atol=1e-6)  # normalized in float32


@pytest.mark.skipif(not cpu_has_bf16_units(), reason="auto is float32 on a CPU without bf16 units")
def test_auto_on_a_cpu_with_bf16_units_is_bfloat16(tiny_dir: Path) -> None:
    auto = ICLEmbedder(str(tiny_dir), devices="cpu", examples_for_task=NOTEBOOK_EXAMPLES,
                       query_instruction_for_retrieval=WEB, on_truncation="ignore")  # fmt: skip
    named = auto.with_options(dtype="bfloat16")
    assert auto.torch_dtype == torch.bfloat16 and named.replicas[0] is auto.replicas[0]  # one set of weights
    np.testing.assert_array_equal(auto.encode_queries(TEXTS), named.encode_queries(TEXTS))
