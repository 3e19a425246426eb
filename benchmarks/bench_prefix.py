"""CPU benchmark of the few-shot prefix: shared-prefix vs copy attention, prefix scaling, queries without an
instruction, tokenization, memory, and the fraction of the ``linear`` peak the default path reaches.

The real-shaped checkpoint of ``bench_cpu.py`` (bge-en-icl's widths, 2 of its 32 layers, random weights, its real
tokenizer), in the default dtype (``dtype="auto"``: bfloat16 on a CPU with bf16 units, else float32). Workload: 256
queries of 3-14 words, with the model card's 2 web-search examples and with 8 examples (a ~1,000-token prefix), and
with the 2 examples but no task instruction (``query_instruction_for_retrieval=None``: the examples keep their own).
Attention: ``shared`` (the default: on CPU torch's fused flash kernel for the prefix and the tail, merged by
log-sum-exp), ``shared-explicit`` (float32 score matrices in row chunks) and ``copy`` (a prefix copy per row): the
``prefix_attention`` option. Runs in ``.venv`` (no FlagEmbedding): ``make bench-prefix``. Each memory figure comes
from a fresh subprocess: the peak RSS of one call that runs 256 queries as one batch, minus the RSS before it (with
``MALLOC_MMAP_THRESHOLD_`` set so that freed memory leaves the process and the peak tracks live memory).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from report import run_header
from roofline import CACHE, config_of, fraction, peak_flops, real_shaped_checkpoint

from bge_icl import WEB_SEARCH_INSTRUCTION, ICLEmbedder
from bge_icl.quickstart import EXAMPLES
from bge_icl.testing import build_checkpoint

WORDS = "protein summit mountain network interface virtual machine pain muscle river ocean forest city".split()


def examples(n: int) -> list[dict[str, str]]:
    """``n`` few-shot examples: the model card's two, then variations of them (about 130 tokens each)."""
    out = []
    for i in range(n):
        base = EXAMPLES[i % len(EXAMPLES)]
        out.append({**base, "query": base["query"] if i < 2 else f"{base['query']} (variant {i})"})
    return out


def queries(n: int = 256, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(3, 14))) for _ in range(n)]


def best_rate(fn, n: int, repeats: int) -> float:  # type: ignore[no-untyped-def]
    best = min(_timed(fn) for _ in range(repeats))
    return n / best


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def checkpoint(root: Path) -> str:
    """The medium checkpoint (hidden 512, 8 layers) that ``bench_serve.py`` loads (many callers on one model)."""
    return str(build_checkpoint(root / "bench", seed=0, hidden_size=512, intermediate_size=1792,
                                num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2))  # fmt: skip


def embedder(path: str, n_examples: int, attention: str = "auto", instruction: str | None = WEB_SEARCH_INSTRUCTION,
             dtype: str = "auto") -> ICLEmbedder:  # fmt: skip
    return ICLEmbedder(
        path,
        devices="cpu",
        dtype=dtype,
        show_progress=False,
        examples_for_task=examples(n_examples),
        query_instruction_for_retrieval=instruction,
        prefix_attention=attention,
    )


def _status_kib(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


# shared: the default (fused flash kernel on CPU); shared-explicit: the explicit float32 kernel; copy: a copy per row.
ATTENTIONS = ("shared", "shared-explicit", "copy")


def memory_child(path: str, n_examples: int, rows: int, attention: str) -> None:
    """One call of 256 queries in batches of ``rows``; prints the peak RSS growth during it, in MiB (Linux)."""
    emb = embedder(path, n_examples, attention).with_options(batch_size=rows, max_batch_tokens=10**9)  # one batch
    emb.encode_queries(queries(4))  # loads, builds the prefix cache
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    before = _status_kib("VmRSS")
    emb.encode_queries(queries(256))
    peak = _status_kib("VmHWM")
    print(json.dumps({"peak_growth_mib": (peak - before) / 1024, "prefix_tokens": emb.prefix_length}))


def memory(path: str, n_examples: int, attention: str, rows: int) -> dict[str, float]:
    # Large allocations get their own mappings, returned at free: the peak RSS then tracks live memory.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    here = str(Path(__file__).resolve().parent)
    code = f"import sys; sys.path.insert(0, {here!r}); import bench_prefix as b; " \
           f"b.memory_child({path!r}, {n_examples}, {rows}, {attention!r})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def rates(path: str, qs: list[str], repeats: int, results: dict[str, object]) -> None:
    """Queries/s for 2 and 8 examples on each attention path, and for 2 examples without an instruction."""
    for n_examples in (2, 8):
        for attention in ATTENTIONS:
            emb = embedder(path, n_examples, attention)
            emb.encode_queries(qs[:4])
            rate = best_rate(lambda e=emb: e.encode_queries(qs), len(qs), repeats)
            results[f"queries_per_s_{n_examples}ex_{attention}"] = round(rate, 1)
            results[f"prefix_tokens_{n_examples}ex"] = emb.prefix_length
        emb = embedder(path, n_examples)
        emb.encode_queries(qs[:4])
        joint = emb.with_options(prefix_cache=False)
        results[f"tokenize_per_s_{n_examples}ex_split"] = round(
            best_rate(lambda e=emb: e.tokenize_queries(qs), len(qs), repeats), 1)  # fmt: skip
        results[f"tokenize_per_s_{n_examples}ex_joint"] = round(
            best_rate(lambda e=joint: e.tokenize_queries(qs), len(qs), repeats), 1)  # fmt: skip
    bare = embedder(path, 2, instruction=None)
    bare.encode_queries(qs[:4])
    results["queries_per_s_2ex_no_instruction"] = round(
        best_rate(lambda: bare.encode_queries(qs), len(qs), repeats), 1)  # fmt: skip
    results["prefix_tokens_2ex_no_instruction"] = bare.prefix_length


def roofline(path: str, qs: list[str], results: dict[str, object]) -> None:
    """The default path's fraction of the ``linear`` peak in the run's dtype (2 examples, shared)."""
    emb = embedder(path, 2)
    config = config_of(path)
    peak = peak_flops(config, emb.torch_dtype)
    tokens = sum(len(x) - (emb.prefix_length or 0) for x in emb.tokenize_queries(qs).ids)
    seconds = len(qs) / float(results["queries_per_s_2ex_shared"])  # type: ignore[arg-type]
    results["linear_peak_tflops"] = round(peak / 1e12, 3)
    results["fraction_of_peak_2ex_shared"] = round(fraction(tokens, seconds, peak, config), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint", type=Path, default=CACHE, help="where the real-shaped checkpoint is kept")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory figures (a subprocess each)")
    parser.add_argument("--queries", type=int, default=256, help="queries per timed call")
    args = parser.parse_args()
    qs = queries(args.queries)
    path = real_shaped_checkpoint(args.checkpoint)
    results: dict[str, object] = {
        **run_header(),
        "checkpoint": "real-shaped, 2 layers",
        "dtype": str(embedder(path, 0).torch_dtype).removeprefix("torch."),
    }
    rates(path, qs, args.repeats, results)
    roofline(path, qs, results)
    for attention in () if args.no_memory else ATTENTIONS:  # one batch of 256 queries: memory grows with rows x P?
        for n_examples in (2, 8):
            growth = memory(path, n_examples, attention, rows=256)["peak_growth_mib"]
            results[f"peak_growth_mib_256q_one_batch_{n_examples}ex_{attention}"] = round(growth, 1)
    for attention in ATTENTIONS:
        results[f"scaling_8ex_over_2ex_{attention}"] = round(
            float(results[f"queries_per_s_8ex_{attention}"]) / float(results[f"queries_per_s_2ex_{attention}"]), 2)  # type: ignore[arg-type]  # fmt: skip
    results["no_instruction_over_instruction"] = round(
        float(results["queries_per_s_2ex_no_instruction"]) / float(results["queries_per_s_2ex_shared"]), 2)  # type: ignore[arg-type]  # fmt: skip
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
