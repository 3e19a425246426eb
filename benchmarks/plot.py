"""Plot the recorded CPU benchmark figures (benchmarks/results.json) into docs/img/benchmarks-cpu.png.

Run ``python benchmarks/plot.py`` after ``make bench-cpu`` (which records with ``--record``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def plot(results: Path, out: Path) -> Path:
    """Bar chart of the latest CPU run: texts/s for bge-icl (its default dtype) and FlagICLModel, per workload, log
    scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in json.loads(results.read_text(encoding="utf-8")) if r["benchmark"] == "cpu"]
    if not runs:
        msg = f"{results} has no CPU benchmark run; run `make bench-cpu` first"
        raise ValueError(msg)
    run = runs[-1]
    labels = list(run["workloads"])
    ours = [run["workloads"][w]["bge_icl_per_s"] for w in labels]
    theirs = [run["workloads"][w]["flagicl_per_s"] for w in labels]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], theirs, width=0.4, label="FlagICLModel 1.4.2", color="#999999")
    ax.bar([x + 0.2 for x in xs], ours, width=0.4, label="bge-icl", color="#2b6cb0")
    for x, w in zip(xs, labels, strict=True):
        ax.annotate(f"{run['workloads'][w]['ratio']:.1f}x", (x + 0.2, ours[x]), ha="center", va="bottom")
    notes = {"queries": "few-shot", "passages": "~190 tokens" if "checkpoint" in run else "20-300 words"}
    ax.set_xticks(list(xs), [f"{w} ({notes[w]})" if w in notes else w for w in labels])
    ax.set_yscale("log")
    ax.set_ylim(top=max(ours) * 2.5)  # room for the ratio labels
    ax.set_ylabel("texts per second (log)")
    dtype = run.get("default_dtype", "float32")  # bge-icl's default dtype on that CPU (FlagICLModel: float32)
    ax.set_title(f"CPU, bge-icl {dtype}, same checkpoint - {run['date']}", fontsize=10)
    ax.legend(frameon=False)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results.json")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "benchmarks-cpu.png")
    args = parser.parse_args()
    print(plot(args.results, args.out))


if __name__ == "__main__":
    main()
