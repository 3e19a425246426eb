"""A small labelled retrieval set (8 judged queries, 24 passages, graded qrels) and its BEIR files, for the
evaluation tests of the core, the CLI, the MTEB wrapper and the docs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CORPUS = {
    "protein-women": "The CDC's average protein requirement for women ages 19 to 70 is 46 grams per day.",
    "protein-sources": "Lentils, chickpeas, tofu, eggs and Greek yogurt are dense sources of protein.",
    "protein-athletes": "Endurance athletes may need 1.2 to 1.4 grams of protein per kilogram of body weight.",
    "summit-definition": "Summit: the highest point of a mountain; also the highest level of something.",
    "everest": "Mount Everest, at 8,849 metres, is the highest mountain above sea level.",
    "g7-summit": "A summit is also a meeting of heads of government, such as the yearly G7 summit.",
    "apex": "Apex, peak and pinnacle all name the top or highest point of something.",
    "virtual-interface": "A virtual network interface is a software-defined network card for containers.",
    "nic": "A network interface card connects a computer to a wired or wireless network.",
    "back-pain": "Short spells of lower back pain are most often caused by muscle strain.",
    "posture": "Poor posture at a desk strains the muscles of the lower back over a working week.",
    "hydration": "Adults are advised to drink about two litres of water a day.",
    "photosynthesis": "Photosynthesis turns light, water and carbon dioxide into glucose and oxygen.",
    "chlorophyll": "Chlorophyll absorbs red and blue light, which is why leaves look green.",
    "python-lists": "In Python, append adds one item to the end of a list and extend adds many.",
    "python-dicts": "A Python dict maps keys to values; get returns a default for a missing key.",
    "rust-ownership": "In Rust every value has one owner, and the value is dropped when its owner goes away.",
    "bread": "Bread dough rises because yeast ferments sugars and releases carbon dioxide.",
    "sourdough": "Sourdough uses a starter of wild yeast and lactic acid bacteria instead of baker's yeast.",
    "tides": "Tides are caused mainly by the Moon's gravity pulling on the oceans.",
    "moon-phases": "The Moon's phases follow from how much of its sunlit half faces the Earth.",
    "marathon": "A marathon is 42.195 kilometres long.",
    "vitamin-d": "Sunlight on the skin lets the body make vitamin D.",
    "coffee": "A cup of brewed coffee holds about 95 milligrams of caffeine.",
}
QUERIES = {
    "q-protein": "how much protein should a female eat",
    "q-summit": "summit define",
    "q-interface": "what is a virtual interface",
    "q-back": "causes of back pain in female for a week",
    "q-plants": "how do plants make food from light",
    "q-python": "python add items to a list",
    "q-bread": "why does bread rise",
    "q-moon": "what causes tides",
    "q-unjudged": "is coffee bad for you",  # no qrels: skipped, with a warning
}
QRELS = {
    "q-protein": {"protein-women": 2, "protein-athletes": 1, "protein-sources": 1, "hydration": 0},
    "q-summit": {"summit-definition": 2, "apex": 1, "g7-summit": 1, "everest": 0},
    "q-interface": {"virtual-interface": 2, "nic": 1},
    "q-back": {"back-pain": 2, "posture": 2},
    "q-plants": {"photosynthesis": 2, "chlorophyll": 1},
    "q-python": {"python-lists": 2, "python-dicts": 0},
    "q-bread": {"bread": 2, "sourdough": 1},
    "q-moon": {"tides": 2, "moon-phases": 0},
}
JUDGED = [q for q in QUERIES if q in QRELS]


def write_beir(folder: Path) -> tuple[Path, Path, Path]:
    """``queries.jsonl``, ``corpus.jsonl`` (with empty titles, as BEIR writes them) and ``qrels.tsv`` in ``folder``."""
    queries, corpus, qrels = folder / "queries.jsonl", folder / "corpus.jsonl", folder / "qrels.tsv"
    queries.write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in QUERIES.items()), encoding="utf-8")
    lines = (json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in CORPUS.items())
    corpus.write_text("".join(lines), encoding="utf-8")
    rows = [f"{q}\t{d}\t{g}" for q, judged in QRELS.items() for d, g in judged.items()]
    qrels.write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return queries, corpus, qrels


# -- the metrics from their definitions (trec_eval's, with MTEB's MRR), for brute-force checks ---------------------


def ranking(query: np.ndarray, passages: np.ndarray, doc_ids: list[str]) -> list[str]:
    """Every doc id by cosine similarity to ``query``, highest first; ties: the larger id first."""
    q = query / np.linalg.norm(query)
    p = passages / np.linalg.norm(passages, axis=1, keepdims=True)
    scores = (p @ q).astype(np.float32)  # (N,)
    return [d for _, d in sorted(zip(scores.tolist(), doc_ids, strict=True), reverse=True)]


def brute_force(ranked: list[str], grades: dict[str, int], k: int) -> dict[str, float]:
    """nDCG@k (gain = grade, log2 discount), recall@k, MRR@k and MAP@k (trec_eval's ``map_cut``: / all relevant)."""
    relevant = {d for d, g in grades.items() if g > 0}
    top = ranked[:k]
    dcg = sum(grades.get(d, 0) / np.log2(rank + 1) for rank, d in enumerate(top, start=1) if grades.get(d, 0) > 0)
    ideal = sorted((g for g in grades.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / np.log2(rank + 1) for rank, g in enumerate(ideal, start=1))
    hits = [rank for rank, d in enumerate(top, start=1) if d in relevant]
    precisions = [(n + 1) / rank for n, rank in enumerate(hits)]
    return {
        "ndcg": dcg / idcg if idcg else 0.0,
        "recall": len(hits) / len(relevant) if relevant else 0.0,
        "mrr": 1.0 / hits[0] if hits else 0.0,
        "map": sum(precisions) / len(relevant) if relevant else 0.0,
    }
