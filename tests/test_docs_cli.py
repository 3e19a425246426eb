"""Every `bge-icl ...` command line in the docs' bash blocks runs, on the tiny checkpoint, in a folder holding
the input files it names. The only edit is the model: `--model X` (or no `--model`) becomes the tiny checkpoint."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bge_icl_cli.cli import main
from tests.conftest import NOTEBOOK_EXAMPLES
from tests.retrieval_data import write_beir

ROOT = Path(__file__).resolve().parent.parent
_BASH = re.compile(r"^```bash[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)


def command_lines() -> list[tuple[str, list[str]]]:
    """(page, argv after `bge-icl`) for every `bge-icl` line of a bash block in README.md and docs/*.md."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in _BASH.findall(path.read_text(encoding="utf-8")):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if words[:1] == ["bge-icl"]:
                    found.append((path.name, words[1:]))
    return found


COMMANDS = command_lines()


def with_tiny_model(argv: list[str], model: Path) -> list[str]:
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
            continue
        if word == "--model":
            skip = True
            continue
        out.append(word)
    return [*out, "--model", str(model), "--devices", "cpu"]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The input files the documented commands name."""
    (tmp_path / "passages.jsonl").write_text(
        "\n".join(json.dumps({"id": i, "text": f"passage {i} about mountains"}) for i in range(3)) + "\n"
    )
    (tmp_path / "questions.txt").write_text("how tall is everest\nsummit define\n")
    (tmp_path / "faq.jsonl").write_text(json.dumps({"question": "can I run it without a GPU?"}) + "\n")
    (tmp_path / "my-examples.json").write_text(json.dumps(NOTEBOOK_EXAMPLES))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("Run it on the CPU with devices='cpu'.\n\nGPUs are faster.\n")
    (tmp_path / "README.md").write_text("bge-icl runs without a GPU, only slower.\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "protein.txt").write_text("Women need about 46 grams of protein a day.\n")
    write_beir(tmp_path)  # queries.jsonl, corpus.jsonl, qrels.tsv
    (tmp_path / "my-dataset" / "qrels").mkdir(parents=True)  # a BEIR dataset folder, for evaluate --data
    write_beir(tmp_path / "my-dataset")[2].rename(tmp_path / "my-dataset" / "qrels" / "test.tsv")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_docs_show_every_subcommand() -> None:
    assert {argv[0] for _, argv in COMMANDS} >= {"demo", "embed", "search", "evaluate", "serve"}


def serve_until_ready(argv: list[str], cwd: Path) -> None:
    """`bge-icl serve` runs until stopped: start it on a free port, wait for /health 200, SIGTERM, expect exit 0."""
    httpx = pytest.importorskip("httpx")
    without_port = [w for i, w in enumerate(argv) if w != "--port" and (i == 0 or argv[i - 1] != "--port")]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bge_icl_cli", *without_port, "--port", "0"], cwd=cwd, env=env,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        seen = []  # with --ray, Ray's own start-up lines come first
        while not (match := re.match(r"bge-icl: listening on (http://\S+) ", seen[-1] if seen else "")):
            seen.append(proc.stderr.readline())  # type: ignore[union-attr]
            assert seen[-1] and len(seen) < 200, "".join(seen)
        deadline = time.monotonic() + 240

        def ready() -> bool:
            try:
                return httpx.get(f"{match.group(1)}/health", timeout=10).status_code == 200
            except httpx.HTTPError:  # Ray's proxy may hold or drop requests until the application is deployed
                return False

        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline, "the documented server did not get ready"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


@pytest.mark.parametrize(("page", "argv"), COMMANDS, ids=[f"{p}:{' '.join(a)[:50]}" for p, a in COMMANDS])
def test_documented_command_runs(page: str, argv: list[str], workdir: Path, tiny_dir: Path) -> None:
    if argv[0] == "demo":
        pytest.importorskip("langchain_core")
        pytest.importorskip("llama_index.core")
    if argv[0] == "search":
        pytest.importorskip("langchain_text_splitters")
    if argv[0] == "evaluate":
        pytest.importorskip("pytrec_eval")
    if argv[0] == "serve":
        pytest.importorskip("fastapi")
        serve_until_ready(with_tiny_model(argv, tiny_dir), workdir)
        return
    assert main(with_tiny_model(argv, tiny_dir)) == 0
    if "-o" in argv:
        assert (workdir / argv[argv.index("-o") + 1]).stat().st_size > 0
