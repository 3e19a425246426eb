"""GPU benchmark: the real bge-en-icl architecture (7B, random fp16 weights made on the GPU).

Runs on a bare GPU machine, from the repository, with nothing installed but torch and transformers:

    make bench-gpu-files                                   # here: writes .cache/bench-tokenizer (needs mistral-common)
    PYTHONPATH=. python benchmarks/bench_gpu.py --tokenizer .cache/bench-tokenizer   # there (carry that folder)

It times tokenization apart from the forward passes; ICL queries of 15-40 tokens after a 300-600-token
few-shot prefix (4 examples), on the shared-prefix path and on the copy path; corpus tokens/s (passages of
64-512 tokens); with and without ``torch.compile`` of the decoder layers (``--compile both``). Warm-up is a
small slice of each workload, not a whole extra pass. It prints the torch / transformers / CUDA / cuDNN
versions, the attention kernel that ran, and the peak memory of each phase; ``--json`` writes them all.
Targets on an H100 (docs/benchmarks.md): corpus >= 35k tokens/s, ICL queries >= 1,500/s with a 500-token
prefix, peak memory <= weights + 8 GiB. ``--tiny`` runs the same code on a small config (CPU works).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers

from bge_icl import WEB_SEARCH_INSTRUCTION, ICLEmbedder
from bge_icl.quickstart import EXAMPLES
from bge_icl.testing import BGE_EN_ICL_CONFIG, mistral_config

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense fp16/bf16
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
VOCAB = ("protein", "mountain", "network", "river", "city", "science", "answer", "query")  # one token each


def four_examples() -> list[dict[str, str]]:
    """The model card's two examples and two variations: a prefix of about 550 tokens."""
    return [*EXAMPLES, *({**e, "query": e["query"] + " (again)"} for e in EXAMPLES)]


def save_random_model(path: Path, device: str, tiny: bool, tokenizer: Path | None) -> int:
    """Write a random-weight fp16 model (initialized on ``device``) plus the tokenizer; return its parameter count."""
    from transformers import MistralModel

    config = mistral_config() if tiny else mistral_config(**BGE_EN_ICL_CONFIG)
    with torch.device(device):
        model = MistralModel(config).to(torch.float16)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(path)
    del model
    if tokenizer is not None:  # prebuilt files: the GPU machine has no mistral-common
        for name in TOKENIZER_FILES:  # required; the rest (added_tokens.json, tokenizer.model) when present
            shutil.copy(tokenizer / name, path / name)
        for extra in tokenizer.iterdir():
            if extra.is_file() and not (path / extra.name).exists():
                shutil.copy(extra, path / extra.name)
    else:
        from bge_icl.testing import build_tokenizer

        build_tokenizer(path)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return n_params


def compile_layers(emb: ICLEmbedder) -> None:
    """``torch.compile`` each decoder layer and the modules the shared-prefix path calls directly."""
    for layer in emb.replicas[0].model.layers:
        layer.compile(dynamic=True)
        for name in ("input_layernorm", "post_attention_layernorm", "mlp"):
            getattr(layer, name).compile(dynamic=True)


class Phases:
    """Times phases (synchronized) and records each one's peak GPU memory."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.rows: dict[str, dict[str, float]] = {}

    def run(self, name: str, fn: Callable[[], Any], n: int, unit: str) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        fn()
        if self.cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.cuda else 0.0
        self.rows[name] = {"seconds": seconds, f"{unit}_per_s": n / seconds, "peak_gib": peak}
        print(f"{name:38} {n / seconds:12,.0f} {unit}/s   {seconds:7.2f} s   peak {peak:6.1f} GiB", flush=True)
        return n / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="small config, to check the script on CPU")
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokenizer", type=Path, help="folder with prebuilt tokenizer files (make bench-gpu-files)")
    parser.add_argument("--passages", type=int, default=4096)
    parser.add_argument("--queries", type=int, default=4096)
    parser.add_argument("--compile", choices=("off", "on", "both"), default="off")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args()
    rng = random.Random(0)
    cuda = args.device.startswith("cuda")
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "device": torch.cuda.get_device_name(args.device) if cuda else "cpu",
    }
    print(json.dumps(info), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bge-en-icl-random"
        n_params = save_random_model(path, args.device, args.tiny, args.tokenizer)
        dtype = "float32" if args.device == "cpu" else "float16"
        kwargs: dict[str, Any] = {"devices": args.device, "dtype": dtype, "show_progress": False,
                                  "examples_for_task": four_examples(),
                                  "query_instruction_for_retrieval": WEB_SEARCH_INSTRUCTION}  # fmt: skip
        emb = ICLEmbedder(str(path), **kwargs)
        weights_gib = torch.cuda.memory_allocated() / 2**30 if cuda else 0.0
        passages = [" ".join(rng.choices(VOCAB, k=rng.randint(62, 510))) for _ in range(args.passages)]
        queries = [" ".join(rng.choices(VOCAB, k=rng.randint(15, 40))) for _ in range(args.queries)]
        phases = Phases(args.device)
        # Tokenization alone (CPU work), then the forward passes of each path.
        phases.run("tokenize queries (prefix ids reused)", lambda: emb.tokenize_queries(queries), len(queries), "q")
        joint = emb.with_options(prefix_cache=False)
        phases.run("tokenize queries (whole prompt)", lambda: joint.tokenize_queries(queries), len(queries), "q")
        n_tokens = sum(len(x) for x in emb.tokenize_corpus(passages).ids)
        copy_path = emb.with_options(prefix_attention="copy")
        modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
        for compiled in modes:
            tag = " (compiled)" if compiled else ""
            if compiled:
                compile_layers(emb)
            for e in (emb, copy_path):
                e.encode_queries(queries[:64])  # warm-up: prefix cache, kernels (and compilation)
            emb.encode_corpus(passages[:32])
            phases.run(f"corpus{tag}", lambda: emb.encode_corpus(passages), n_tokens, "tok")
            phases.run(f"ICL queries, shared prefix{tag}", lambda: emb.encode_queries(queries), len(queries), "q")
            phases.run(f"ICL queries, copy path{tag}", lambda: copy_path.encode_queries(queries), len(queries), "q")
    gpu = next((k for k in PEAK_FLOPS if k in info["device"]), None)
    corpus_rate = phases.rows["corpus"]["tok_per_s"]
    mfu = corpus_rate * 2 * n_params / PEAK_FLOPS[gpu] if gpu else None
    info.update(
        params_b=n_params / 1e9,
        dtype=dtype,
        attention=emb.replicas[0].attn_implementation,
        prefix_attention="shared" if emb.stats.prefix_hits else "none",
        cached_prefix_tokens=emb.prefix_length,
        weights_gib=weights_gib,
        corpus_mfu=mfu,
        phases=phases.rows,
    )
    print(
        f"params {n_params / 1e9:.2f}B, {dtype}, attention {info['attention']}, cached prefix "
        f"{emb.prefix_length} tokens, weights {weights_gib:.1f} GiB" + (f", corpus MFU {mfu:.1%}" if mfu else "")
    )
    if args.json:
        args.json.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
