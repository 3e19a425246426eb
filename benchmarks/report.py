"""What the benchmarks say about a run: when and where it ran, and its figures, printed and kept (``--record``)."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import transformers


def machine() -> str:
    """The machine, as every benchmark records it: architecture, cores, torch threads."""
    return f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def run_header() -> dict[str, Any]:
    """The first fields of a run's figures: its date, the machine and the software."""
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "software": f"torch {torch.__version__}, transformers {transformers.__version__}",
    }


def append_record(path: Path | str, figures: Mapping[str, Any]) -> None:
    """Append ``figures`` to the JSON-lines file ``path`` (one line a run)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(figures) + "\n")


def report(figures: Mapping[str, Any], record: Path | None) -> None:
    """Print ``figures`` (indented JSON); with ``--record FILE``, append them to that file as well."""
    print(json.dumps(figures, indent=2))
    if record:
        append_record(record, figures)
