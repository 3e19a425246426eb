"""Where a CPU pass spends its time: torch's profiler over every thread (the scheduler's worker runs the forward, so
a profiler of the calling thread alone sees nothing), ops grouped into matmul, attention, elementwise and the rest.

Usage: ``python benchmarks/profile_cpu.py [--dtype auto] [--budget 512]`` (the real-shaped checkpoint of
``bench_cpu.py``; 32 passages of ~190 tokens, then 64 few-shot queries). Prints each group's share of the
profiled op time, the wall time, and the top ops.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from bench_cpu import workload
from roofline import CACHE, real_shaped_checkpoint
from torch.profiler import ProfilerActivity, profile

from bge_icl import WEB_SEARCH_INSTRUCTION, ICLEmbedder
from bge_icl.quickstart import EXAMPLES

GROUPS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math"),
    "elementwise": ("aten::mul", "aten::add", "aten::silu", "aten::pow", "aten::mean", "aten::rsqrt", "aten::sin",
                    "aten::cos", "aten::neg", "aten::cat", "aten::copy_", "aten::exp", "aten::sub", "aten::div",
                    "aten::maximum", "aten::masked_fill", "aten::index", "aten::cumsum"),
}  # fmt: skip


def profiled(fn: Any) -> tuple[float, Any]:
    """Wall seconds of ``fn()`` and the profile of every thread during it."""
    config = torch._C._profiler._ExperimentalConfig(profile_all_threads=True)
    with profile(activities=[ProfilerActivity.CPU], experimental_config=config) as prof:
        start = time.perf_counter()
        fn()
        wall = time.perf_counter() - start
    return wall, prof


def shares(prof: Any) -> dict[str, float]:
    """Self CPU seconds per group of ops."""
    out = dict.fromkeys([*GROUPS, "other"], 0.0)
    for event in prof.key_averages():
        group = next((g for g, names in GROUPS.items() if event.key in names), "other")
        out[group] += event.self_cpu_time_total / 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--budget", type=int, default=None, help="max_batch_tokens (None: the CPU default)")
    args = parser.parse_args()
    path = real_shaped_checkpoint(CACHE)
    emb = ICLEmbedder(path, devices="cpu", dtype=args.dtype, show_progress=False, max_batch_tokens=args.budget,
                      examples_for_task=EXAMPLES, query_instruction_for_retrieval=WEB_SEARCH_INSTRUCTION)  # fmt: skip
    queries, passages = workload()
    emb.encode_queries(queries[:4]), emb.encode_corpus(passages[:4])
    jobs = (("passages", lambda: emb.encode_corpus(passages)), ("queries", lambda: emb.encode_queries(queries)))
    for name, fn in jobs:
        wall, prof = profiled(fn)
        groups = shares(prof)
        total = sum(groups.values())
        parts = ", ".join(f"{g} {s:.2f} s ({s / total:.0%})" for g, s in groups.items())
        print(f"{name} ({emb.torch_dtype}, budget {emb.token_budget}): wall {wall:.2f} s; op time {total:.2f} s: "
              f"{parts}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
