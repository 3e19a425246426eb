"""CPU benchmark: bge-icl vs FlagEmbedding's FlagICLModel, side by side in one run, same checkpoint.

Random-weight MistralModel with bge-en-icl's real tokenizer (hidden 512, 8 layers, 8 heads / 2 KV heads,
intermediate 1792, vocab 32003), fp32 on CPU. Workload: 128 queries of 3-14 words with the model card's two
web-search examples and instruction; 128 passages of 20-300 words. Needs FlagEmbedding, so it runs in the
transformers-4.57 environment: ``make bench-cpu``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from bge_icl import WEB_SEARCH_INSTRUCTION, ICLEmbedder
from bge_icl.quickstart import EXAMPLES
from bge_icl.testing import build_checkpoint

WORDS = (
    "protein summit mountain network interface virtual machine container pain muscle posture spine water energy "
    "river ocean forest city history science language model search query passage answer question guideline chart "
    "marathon training woman day gram average requirement definition highest level meeting leader government"
).split()


def workload(seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    queries = [" ".join(rng.choices(WORDS, k=rng.randint(3, 14))) for _ in range(128)]
    passages = [" ".join(rng.choices(WORDS, k=rng.randint(20, 300))) + "." for _ in range(128)]
    return queries, passages


def best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--record", type=Path, help="append the figures to this JSON file (benchmarks/results.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from FlagEmbedding import FlagICLModel

    queries, passages = workload()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(
            build_checkpoint(
                Path(tmp) / "bench",
                seed=0,
                hidden_size=512,
                intermediate_size=1792,
                num_hidden_layers=8,
                num_attention_heads=8,
                num_key_value_heads=2,
            )
        )
        kwargs = {"examples_for_task": EXAMPLES, "query_instruction_for_retrieval": WEB_SEARCH_INSTRUCTION}
        ours = ICLEmbedder(path, devices="cpu", dtype="float32", show_progress=False, **kwargs)
        flag = FlagICLModel(path, use_fp16=False, devices="cpu", **kwargs)
        ours.encode_queries(queries[:4]), flag.encode_queries(queries[:4])  # warm-up (and builds the prefix cache)
        ours.encode_corpus(passages[:4]), flag.encode_corpus(passages[:4])
        prefix_tokens = ours.prefix_length or 0
        rows = []
        for label, a, b, n in [
            ("queries", lambda: ours.encode_queries(queries), lambda: flag.encode_queries(queries), len(queries)),
            ("passages", lambda: ours.encode_corpus(passages), lambda: flag.encode_corpus(passages), len(passages)),
        ]:
            t_ours, v_ours = best_of(a, args.repeats)
            t_flag, v_flag = best_of(b, args.repeats)
            delta = float(np.abs(v_ours - v_flag).max())
            rows.append((label, n / t_ours, n / t_flag, t_flag / t_ours, delta))
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}; cached prefix: {prefix_tokens} tokens; best of {args.repeats}"
    )
    print(f"{'workload':10} {'bge-icl/s':>10} {'FlagICL/s':>10} {'ratio':>7} {'max|delta|':>11}")
    for label, ours_rate, flag_rate, ratio, delta in rows:
        print(f"{label:10} {ours_rate:10.1f} {flag_rate:10.1f} {ratio:6.1f}x {delta:11.2e}")
    if args.record:
        record(args.record, rows, prefix_tokens)


def record(path: Path, rows: list[tuple[str, float, float, float, float]], prefix_tokens: int) -> None:
    """Append this run's figures to ``path`` (read by benchmarks/plot.py)."""
    results = json.loads(path.read_text(encoding="utf-8")) if path.exists() else []
    run = {
        "benchmark": "cpu",
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        "software": f"torch {torch.__version__}, transformers {transformers.__version__}",
        "command": "python " + " ".join(sys.argv),
        "cached_prefix_tokens": prefix_tokens,
        "workloads": {
            label: {
                "bge_icl_per_s": round(ours, 2),
                "flagicl_per_s": round(flag, 2),
                "ratio": round(ratio, 2),
                "max_abs_delta": delta,
            }
            for label, ours, flag, ratio, delta in rows
        },
    }
    path.write_text(json.dumps([*results, run], indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
