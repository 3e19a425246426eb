"""GPU benchmark: the real bge-en-icl architecture (7B, random fp16 weights made on the GPU).

Reports corpus tokens/s (4,096 passages of 64-512 tokens), ICL queries/s with and without the prefix
cache, peak GPU memory, and MFU (about 14 GFLOP per token: 2 x 7.1B parameters; H100 dense fp16 peak
989 TFLOP/s). Meant to finish within about 8 minutes on one H100. ``--tiny`` runs the same code on a
small config (CPU works) to check the script itself.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from bge_icl import WEB_SEARCH_INSTRUCTION, ICLEmbedder
from bge_icl.quickstart import EXAMPLES
from bge_icl.testing import BGE_EN_ICL_CONFIG, build_tokenizer, mistral_config

PEAK_FLOPS = 989e12


def save_random_model(path: Path, device: str, tiny: bool) -> int:
    """Write a random-weight fp16 model (initialized on ``device``) plus the tokenizer; return its parameter count."""
    from transformers import MistralModel

    config = mistral_config() if tiny else mistral_config(**BGE_EN_ICL_CONFIG)
    with torch.device(device):
        model = MistralModel(config).to(torch.float16)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(path)
    build_tokenizer(path)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return n_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="small config, to check the script on CPU")
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--passages", type=int, default=4096)
    parser.add_argument("--queries", type=int, default=2048)
    args = parser.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bge-en-icl-random"
        n_params = save_random_model(path, args.device, args.tiny)
        dtype = "float32" if args.device == "cpu" else "float16"
        emb = ICLEmbedder(
            str(path),
            devices=args.device,
            dtype=dtype,
            show_progress=False,
            examples_for_task=EXAMPLES,
            query_instruction_for_retrieval=WEB_SEARCH_INSTRUCTION,
        )
        no_cache = ICLEmbedder(
            str(path),
            devices=args.device,
            dtype=dtype,
            show_progress=False,
            prefix_cache=False,
            examples_for_task=EXAMPLES,
            query_instruction_for_retrieval=WEB_SEARCH_INSTRUCTION,
        )
        vocab = [t for t in ("protein", "mountain", "network", "river", "city", "science", "answer", "query")]
        # Passages of 64-512 tokens: each word here is one token after the first.
        passages = [" ".join(rng.choices(vocab, k=rng.randint(62, 510))) for _ in range(args.passages)]
        queries = [" ".join(rng.choices(vocab, k=rng.randint(3, 14))) for _ in range(args.queries)]
        n_tokens = sum(len(x) for x in emb.tokenize_corpus(passages).ids)
        sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
        weights_gib = torch.cuda.memory_allocated() / 2**30 if args.device.startswith("cuda") else 0.0
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

        def timed(fn):  # type: ignore[no-untyped-def]
            fn()
            sync()
            start = time.perf_counter()
            fn()
            sync()
            return time.perf_counter() - start

        emb.encode_corpus(passages[:64])
        t_corpus = timed(lambda: emb.encode_corpus(passages))
        t_q = timed(lambda: emb.encode_queries(queries))
        t_q_full = timed(lambda: no_cache.encode_queries(queries[: len(queries) // 4])) * 4
        peak_gib = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else 0.0
    flops_per_token = 2 * n_params
    prefix_len = emb._prefix.length if emb._prefix else 0
    print(
        f"device: {torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}; "
        f"params {n_params / 1e9:.2f}B; dtype {dtype}; cached prefix {prefix_len} tokens"
    )
    print(
        f"corpus: {args.passages} passages, {n_tokens} tokens in {t_corpus:.2f}s = "
        f"{n_tokens / t_corpus:,.0f} tokens/s; "
        f"MFU {n_tokens / t_corpus * flops_per_token / PEAK_FLOPS:.1%}"
    )
    print(f"ICL queries with prefix cache: {len(queries) / t_q:,.0f}/s; without: {len(queries) / t_q_full:,.0f}/s")
    print(f"memory: weights {weights_gib:.1f} GiB, peak {peak_gib:.1f} GiB")


if __name__ == "__main__":
    main()
