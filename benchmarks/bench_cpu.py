"""CPU benchmark: bge-icl in float32 and in bfloat16 and FlagEmbedding's FlagICLModel (float32), side by side in one
run on one checkpoint, each against the machine's ``linear`` peak measured in the same run.

The checkpoint has bge-en-icl's real layer shapes (hidden 4096, MLP 14336, 32 / 8 heads, its tokenizer) with 2 of its
32 layers, random weights (:func:`bge_icl.testing.build_real_shaped_checkpoint`, kept in ``.cache/``). Workload: 64
queries of 3-14 words with the model card's two web-search examples and instruction; 32 passages of 80-180 words
(~190 tokens); one query alone. FlagICLModel runs the first 16 queries and passages (it is slow: it recomputes the
prefix per query). The roofline (``benchmarks/roofline.py``): the fraction of the ``linear`` peak in the run's dtype
that each figure reaches (the peak measured again right before each engine's runs), and for one query its time over
the time of its own matmuls (measured right after it). The 7B column scales each rate
to 32 layers (all of the time counted as layer time). Needs FlagEmbedding, so it runs in the transformers-4.57
environment: ``make bench-cpu``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from report import machine
from roofline import CACHE, best_of, config_of, fraction, linear_seconds, peak_flops, per_7b, real_shaped_checkpoint

from bge_icl import WEB_SEARCH_INSTRUCTION, ICLEmbedder
from bge_icl.quickstart import EXAMPLES

WORDS = (
    "protein summit mountain network interface virtual machine container pain muscle posture spine water energy "
    "river ocean forest city history science language model search query passage answer question guideline chart "
    "marathon training woman day gram average requirement definition highest level meeting leader government"
).split()
FLAG_ITEMS = 16
"""FlagICLModel runs this many of the queries and of the passages."""


def workload(seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    queries = [" ".join(rng.choices(WORDS, k=rng.randint(3, 14))) for _ in range(64)]
    passages = [" ".join(rng.choices(WORDS, k=rng.randint(80, 180))) + "." for _ in range(32)]
    return queries, passages


def work_tokens(emb: ICLEmbedder, kind: str, texts: list[str], cached: bool) -> int:
    """Real tokens the run puts through the layers (queries on the cached prefix: their own tokens only)."""
    if kind == "passages":
        return sum(map(len, emb.tokenize_corpus(texts).ids))
    skip = (emb.prefix_length or 0) if cached else 0
    return sum(len(x) - skip for x in emb.tokenize_queries(texts).ids)


def measure(name: str, emb: Any, dtype: torch.dtype, jobs: dict[str, list[str]], ctx: dict[str, Any]) -> dict:  # type: ignore[type-arg]
    """Each job's rate, fraction of the peak, and (one query) time over its matmul time; the vectors."""
    out: dict[str, Any] = {"engine": name, "dtype": str(dtype).removeprefix("torch."), "vectors": {}}
    cached = name.startswith("bge-icl")
    ctx["peaks"][dtype] = peak_flops(ctx["config"], dtype)  # again right before the engine: a shared machine drifts
    for kind, texts in jobs.items():
        call = emb.encode_corpus if kind == "passages" else emb.encode_queries
        seconds, vectors = best_of(lambda c=call, t=texts: c(t), ctx["repeats"])
        tokens = work_tokens(ctx["counter"], "passages" if kind == "passages" else "queries", texts, cached)
        row = {"per_s": len(texts) / seconds, "fraction": fraction(tokens, seconds, ctx["peaks"][dtype], ctx["config"])}
        row["per_s_7b"] = per_7b(row["per_s"], ctx["config"]["num_hidden_layers"])
        if kind == "one query":
            row["over_matmul"] = seconds / linear_seconds(ctx["config"], tokens, dtype)
            row["ms"] = seconds * 1000
        out[kind], out["vectors"][kind] = row, np.asarray(vectors, dtype=np.float32)
        print(f"  {name} {out['dtype']} {kind}: {row['per_s']:.2f}/s", file=sys.stderr, flush=True)  # progress
    return out


def agreement(a: dict[str, Any], b: dict[str, Any], passages: list[str]) -> dict[str, float]:
    """bf16 against float32: the least cosine of any row, and how many of each query's top-5 passages agree."""
    qa, qb = a["vectors"]["queries"], b["vectors"]["queries"]
    pa, pb = a["vectors"]["passages"], b["vectors"]["passages"]
    cos = min(float((qa * qb).sum(1).min()), float((pa * pb).sum(1).min()))
    top_a, top_b = np.argsort(-qa @ pa.T, axis=1)[:, :5], np.argsort(-qb @ pb.T, axis=1)[:, :5]
    same = np.mean([len(set(x) & set(y)) / 5 for x, y in zip(top_a, top_b, strict=True)])
    return {"min_cosine": cos, "top5_same": float(same), "passages": len(passages)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--checkpoint", type=Path, default=CACHE, help="where the real-shaped checkpoint is kept")
    parser.add_argument("--record", type=Path, help="append the figures to this JSON file (benchmarks/results.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from FlagEmbedding import FlagICLModel

    path = real_shaped_checkpoint(args.checkpoint)
    queries, passages = workload()
    kwargs: dict[str, Any] = {"examples_for_task": EXAMPLES, "query_instruction_for_retrieval": WEB_SEARCH_INSTRUCTION}
    auto = ICLEmbedder(path, devices="cpu", show_progress=False, **kwargs)  # the default: what a user gets
    f32 = auto.with_options(dtype="float32")
    bf16 = auto.with_options(dtype="bfloat16")
    flag = FlagICLModel(path, use_fp16=False, devices="cpu", **kwargs)
    config = config_of(path)
    ctx = {"repeats": args.repeats, "config": config, "counter": f32, "peaks": {}}
    for emb in (f32, bf16):
        emb.encode_queries(queries[:4]), emb.encode_corpus(passages[:4])  # warm-up, builds the prefix cache
    flag.encode_queries(queries[:2]), flag.encode_corpus(passages[:2])
    jobs = {"queries": queries, "passages": passages, "one query": queries[:1]}
    flag_jobs = {"queries": queries[:FLAG_ITEMS], "passages": passages[:FLAG_ITEMS], "one query": queries[:1]}
    runs = [measure("bge-icl", f32, torch.float32, jobs, ctx), measure("bge-icl", bf16, torch.bfloat16, jobs, ctx),
            measure("FlagICLModel", flag, torch.float32, flag_jobs, ctx)]  # fmt: skip
    agree = agreement(runs[1], runs[0], passages)
    delta = float(np.abs(runs[2]["vectors"]["passages"] - runs[0]["vectors"]["passages"][:FLAG_ITEMS]).max())
    report(runs, ctx, agree, delta, auto, args)


def report(runs: list[dict[str, Any]], ctx: dict[str, Any], agree: dict[str, float], delta: float, auto: ICLEmbedder,
           args: argparse.Namespace) -> None:  # fmt: skip
    peaks = ctx["peaks"]
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch "
          f"{torch.__version__}; real-shaped checkpoint, {ctx['config']['num_hidden_layers']} layers; dtype='auto' is "
          f"{str(auto.torch_dtype).removeprefix('torch.')}; cached prefix {auto.prefix_length} tokens; best of "
          f"{args.repeats}; linear peak float32 {peaks[torch.float32] / 1e12:.2f}, bfloat16 "
          f"{peaks[torch.bfloat16] / 1e12:.2f} TFLOP/s")  # fmt: skip
    print(f"{'engine':13} {'dtype':9} {'workload':10} {'per s':>8} {'7B est/s':>9} {'of peak':>8} {'vs matmul':>9}")
    for run in runs:
        for kind in ("queries", "passages", "one query"):
            row = run[kind]
            extra = f"{row['over_matmul']:8.2f}x" if "over_matmul" in row else ""
            print(f"{run['engine']:13} {run['dtype']:9} {kind:10} {row['per_s']:8.2f} {row['per_s_7b']:9.2f} "
                  f"{row['fraction']:8.2f} {extra:>9}")  # fmt: skip
    for kind in ("queries", "passages"):
        print(f"bf16 / float32, {kind}: {runs[1][kind]['per_s'] / runs[0][kind]['per_s']:.2f}x")
    print(f"one query: float32 {runs[0]['one query']['ms']:.0f} ms, bfloat16 {runs[1]['one query']['ms']:.0f} ms")
    print(f"bf16 against float32: least cosine {agree['min_cosine']:.5f}; "
          f"top-5 passages the same {agree['top5_same']:.0%}")
    print(f"max |delta| bge-icl float32 vs FlagICLModel (passages): {delta:.2e}")
    if args.record:
        record(args.record, runs, ctx, agree, delta, auto)


def record(path: Path, runs: list[dict[str, Any]], ctx: dict[str, Any], agree: dict[str, float], delta: float,
           auto: ICLEmbedder) -> None:  # fmt: skip
    """Append this run's figures to ``path`` (benchmarks/plot.py reads bge-icl at its default dtype, FlagICLModel)."""
    results = json.loads(path.read_text(encoding="utf-8")) if path.exists() else []
    f32, bf16, flag = runs
    default = bf16 if auto.torch_dtype == torch.bfloat16 else f32
    workloads = {}
    for kind in ("queries", "passages", "one query"):
        workloads[kind] = {
            "bge_icl_per_s": round(default[kind]["per_s"], 2), "flagicl_per_s": round(flag[kind]["per_s"], 2),
            "ratio": round(default[kind]["per_s"] / flag[kind]["per_s"], 2),
            "float32_per_s": round(f32[kind]["per_s"], 2), "bfloat16_per_s": round(bf16[kind]["per_s"], 2),
            "fraction_of_peak": {name: round(r[kind]["fraction"], 2)
                                 for name, r in zip(("float32", "bfloat16", "flagicl"), runs, strict=True)},
        }  # fmt: skip
    run = {
        "benchmark": "cpu",
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "software": f"torch {torch.__version__}, transformers {transformers.__version__}",
        "command": "python " + " ".join(sys.argv),
        "checkpoint": f"real-shaped, {ctx['config']['num_hidden_layers']} layers",
        "default_dtype": str(auto.torch_dtype).removeprefix("torch."),
        "cached_prefix_tokens": auto.prefix_length,
        "linear_peak_tflops": {str(d).removeprefix("torch."): round(p / 1e12, 3) for d, p in ctx["peaks"].items()},
        "bf16_agreement": agree,
        "max_abs_delta_float32_vs_flagicl": delta,
        "workloads": workloads,
    }
    path.write_text(json.dumps([*results, run], indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
