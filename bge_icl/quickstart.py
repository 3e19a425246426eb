"""The model card's example: two web-search examples, two queries, two passages, a 2x2 similarity matrix.

Run ``python -m bge_icl.quickstart`` (defaults to BAAI/bge-en-icl) or ``--model PATH`` for a local checkpoint.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import sys

import numpy as np

from bge_icl.encoder import ICLEmbedder
from bge_icl.prompts import WEB_SEARCH_INSTRUCTION

# The model card's two web-search examples, shipped as the bundled example set "web-search".
EXAMPLES: list[dict[str, str]] = json.loads(
    importlib.resources.files("bge_icl").joinpath("data", "examples", "web-search.json").read_text(encoding="utf-8")
)
QUERIES = ["how much protein should a female eat", "summit define"]
DOCUMENTS = [
    "As a general guideline, the CDC's average requirement of protein for women ages 19 to 70 is 46 grams per "
    "day. But, as you can see from this chart, you'll need to increase that if you're expecting or training for "
    "a marathon. Check out the chart below to see how much protein you should be eating each day.",
    "Definition of summit for English Language Learners. : 1  the highest point of a mountain : the top of a "
    "mountain. : 2  the highest level. : 3  a meeting or series of meetings between the leaders of two or more "
    "governments.",
]


def similarity_matrix(model: str, devices: str | None = None, dtype: str = "auto") -> np.ndarray:
    """The (2, 2) query-passage cosine similarity matrix of the model card's example."""
    emb = ICLEmbedder(
        model,
        examples_for_task=EXAMPLES,
        query_instruction_for_retrieval=WEB_SEARCH_INSTRUCTION,
        devices=devices,
        dtype=dtype,
    )
    return emb.encode_queries(QUERIES) @ emb.encode_corpus(DOCUMENTS).T  # (2, H) @ (H, 2) -> (2, 2)


def main(argv: list[str] | None = None) -> int:
    """Print the similarity matrix; exit 2 with a hint when the model cannot be loaded."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="BAAI/bge-en-icl", help="hub id or local checkpoint directory")
    parser.add_argument("--devices", default=None, help="e.g. cpu, cuda:0 (default: first GPU, else CPU)")
    parser.add_argument("--dtype", default="auto", help="auto, float16, bfloat16 or float32")
    args = parser.parse_args(argv)
    try:
        sim = similarity_matrix(args.model, args.devices, args.dtype)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"model: {args.model}")
    for q, row in zip(QUERIES, sim, strict=True):
        print(f"{q!r:45} " + "  ".join(f"{s:.4f}" for s in row))
    print("(with the real BAAI/bge-en-icl weights the model card shows [[0.6064, 0.302], [0.257, 0.5366]])")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
