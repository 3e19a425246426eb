"""benchmarks/plot.py turns recorded figures into the docs' PNG."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
ROOT = Path(__file__).resolve().parent.parent


def _plot_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_plot", ROOT / "benchmarks" / "plot.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plot_writes_a_png(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    run = {
        "benchmark": "cpu",
        "date": "2026-01-01",
        "workloads": {
            "queries": {"bge_icl_per_s": 100.0, "flagicl_per_s": 5.0, "ratio": 20.0},
            "passages": {"bge_icl_per_s": 10.0, "flagicl_per_s": 4.0, "ratio": 2.5},
        },
    }
    results.write_text(json.dumps([run]))
    out = _plot_module().plot(results, tmp_path / "img" / "plot.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_a_cpu_run_says_what_to_do(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text("[]")
    with pytest.raises(ValueError, match=re.escape("has no CPU benchmark run; run `make bench-cpu` first")):
        _plot_module().plot(results, tmp_path / "x.png")


def test_recorded_figures_match_the_docs_table() -> None:
    """The latest recorded run is the one docs/benchmarks.md reports."""
    runs = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    latest = [r for r in runs if r["benchmark"] == "cpu"][-1]
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    for workload in latest["workloads"].values():
        assert f"**{workload['ratio']:.1f}×**" in page
