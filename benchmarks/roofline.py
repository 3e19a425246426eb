"""The machine's ``linear`` peak at bge-en-icl's shapes, and what fraction of it a run reaches (CPU benchmarks).

The peak is measured in the same process as the run it judges: the seven projections of one decoder layer
(q, k, v, o, gate, up, down) as ``torch.nn.functional.linear`` on a (M, 4096) input, best of a few, in the run's dtype.
A run's *work* is the linear FLOPs of the real tokens it puts through the decoder layers (padding, attention scores,
norms and the embedding lookup are not counted: they are what the path adds around the matmuls). Its fraction of the
peak is work / time / peak. Bench checkpoints have bge-en-icl's real widths with 2 of its 32 layers
(:func:`bge_icl.testing.build_real_shaped_checkpoint`); a 7B figure scales the per-layer time to 32 layers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bge_icl.testing import build_real_shaped_checkpoint, real_shaped_config

REAL_LAYERS = 32
"""bge-en-icl's layer count: a real-shaped checkpoint's per-layer figures scale to it."""
CACHE = Path(".cache") / "bench-real-shaped"
"""Where the real-shaped checkpoint is kept between benchmark runs (it takes minutes to write)."""


def real_shaped_checkpoint(directory: Path = CACHE) -> str:
    """The real-shaped 2-layer checkpoint, built once into ``directory`` (kept: 1.1 GB)."""
    if not (directory / "config.json").is_file():
        build_real_shaped_checkpoint(directory)
    return str(directory)


def layer_shapes(config: dict[str, Any]) -> list[tuple[int, int]]:
    """(in, out) of each projection of one decoder layer: q, k, v, o, gate, up, down."""
    H, mlp = config["hidden_size"], config["intermediate_size"]
    d = H // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * d, config["num_key_value_heads"] * d
    return [(H, q), (H, kv), (H, kv), (q, H), (H, mlp), (H, mlp), (mlp, H)]


def flops_per_token(config: dict[str, Any]) -> int:
    """Linear FLOPs of one token through every layer of ``config`` (2 per multiply-add)."""
    return 2 * config["num_hidden_layers"] * sum(i * o for i, o in layer_shapes(config))


def linear_seconds(config: dict[str, Any], tokens: int, dtype: torch.dtype, repeats: int = 5) -> float:
    """Best time of one layer's seven projections on ``tokens`` rows, times the layer count: the matmul time of a
    pass over ``tokens`` tokens."""
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(o, i, generator=gen).to(dtype) * i**-0.5 for i, o in layer_shapes(config)]
    x = {n: torch.randn(tokens, n, generator=gen).to(dtype) for n in {i for i, _ in layer_shapes(config)}}
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            for w in weights:
                F.linear(x[w.shape[1]], w)  # (M, in) @ (in, out)
            best = min(best, time.perf_counter() - start)
    return best * config["num_hidden_layers"]


def peak_flops(config: dict[str, Any], dtype: torch.dtype, tokens: int = 512) -> float:
    """The machine's ``linear`` FLOP/s at the model's shapes on ``tokens`` rows (a pass of the CPU budget)."""
    return tokens * flops_per_token(config) / linear_seconds(config, tokens, dtype)


def fraction(tokens: int, seconds: float, peak: float, config: dict[str, Any]) -> float:
    """The fraction of ``peak`` a run reaches that put ``tokens`` real tokens through the layers in ``seconds``."""
    return tokens * flops_per_token(config) / seconds / peak


def per_7b(rate: float, layers: int) -> float:
    """A rate (items/s) scaled from ``layers`` layers to bge-en-icl's 32: all of the time taken as layer time,
    so this is a lower bound on the 7B model's rate on this machine."""
    return rate * layers / REAL_LAYERS


def config_of(path: str) -> dict[str, Any]:
    """The real-shaped checkpoint's sizes (those :func:`layer_shapes` reads)."""
    import json

    config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    return {**real_shaped_config(config["num_hidden_layers"]), **config}


def best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """The best wall time of ``repeats`` calls of ``fn``, and the last call's result."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def real_tokens(ids: Sequence[Sequence[int]], skip: int = 0) -> int:
    """Tokens that go through the layers: every row's ids after the first ``skip`` (a cached prefix)."""
    return sum(len(x) - skip for x in ids)
