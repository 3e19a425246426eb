"""What a new user hits first on the command line: BOMs, stdin, suffix case, Ctrl-C, search folders, noise.

Each case runs ``bge-icl`` as a real subprocess (``python -m bge_icl_cli``), as a user's shell would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bge_icl import ICLEmbedder

CPU = ["--devices", "cpu"]
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}


def bge_icl(*argv: object, stdin: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "bge_icl_cli", *map(str, argv)],
        input=stdin,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture(scope="module")
def core(tiny_dir: Path) -> ICLEmbedder:
    return ICLEmbedder(str(tiny_dir), devices="cpu", show_progress=False)


def test_help_and_usage_errors_do_not_import_torch() -> None:
    code = (
        "import sys\nfrom bge_icl_cli.cli import main\n"
        "codes = [main(['--help']), main(['embed']), main(['search', '--help'])]\n"
        "assert codes == [0, 1, 0], codes\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'heavy imports before a command ran'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr


def test_utf8_bom_is_not_part_of_the_first_text(tiny_dir: Path, tmp_path: Path, core: ICLEmbedder) -> None:
    txt = tmp_path / "bom.txt"
    txt.write_bytes("\ufefffirst line\nsecond line\n".encode())
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(("\ufeff" + json.dumps({"id": "a", "text": "first line"}) + "\n").encode())
    for source, out in ((txt, tmp_path / "t.npy"), (jsonl, tmp_path / "j.npy")):
        proc = bge_icl("embed", source, "-o", out, "--kind", "corpus", "--model", tiny_dir, *CPU, "-q")
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_allclose(np.load(out)[0], core.encode_corpus(["first line"])[0], atol=1e-6)


def test_dash_reads_stdin(tiny_dir: Path, tmp_path: Path, core: ICLEmbedder) -> None:
    out = tmp_path / "stdin.npy"
    proc = bge_icl("embed", "-", "-o", out, "--kind", "corpus", "--model", tiny_dir, *CPU, "-q", stdin="alpha\nbeta\n")
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(out), core.encode_corpus(["alpha", "beta"]), atol=1e-6)
    lines = json.dumps({"text": "alpha"}) + "\n"
    out = tmp_path / "stdin.jsonl"
    proc = bge_icl("embed", "-", "--format", "jsonl", "-o", out, "--kind", "corpus", "--model", tiny_dir, *CPU, "-q",
                   stdin=lines)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text().splitlines()[0])["id"] == 1


def test_suffixes_are_case_insensitive_and_a_directory_is_named(tiny_dir: Path, tmp_path: Path) -> None:
    upper = tmp_path / "NOTES.TXT"
    upper.write_text("one\ntwo\n", encoding="utf-8")
    proc = bge_icl("embed", upper, "-o", tmp_path / "u.npy", "--kind", "corpus", "--model", tiny_dir, *CPU, "-q")
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "x.txt"
    folder.mkdir()
    proc = bge_icl("embed", folder, "-o", tmp_path / "d.npy", "--kind", "corpus", "--model", tiny_dir, *CPU)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"bge-icl: error: input {folder} is a directory, expected a file"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch-size", "0"], "bge-icl: error: --batch-size must be a positive int, got 0"),
        (["--max-length", "3", "--kind", "query"], "bge-icl: error: --max-length=3 leaves no room for the query"),
        (["--dtype", "fp8"], "bge-icl: error: --dtype fp8 is not supported; valid: 'auto'"),
    ],
)
def test_errors_name_cli_options(tiny_dir: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    texts = tmp_path / "in.txt"
    texts.write_text("hello\n", encoding="utf-8")
    kind = [] if "--kind" in extra else ["--kind", "corpus"]
    proc = bge_icl("embed", texts, "-o", tmp_path / "o.npy", *kind, "--model", tiny_dir, *CPU, *extra)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr
    assert "_length" not in proc.stderr and "batch_size" not in proc.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("delay", [0.3, 1.5])
def test_ctrl_c_exits_130_without_a_traceback(tiny_dir: Path, tmp_path: Path, delay: float) -> None:
    texts = tmp_path / "in.txt"
    texts.write_text("hello\n" * 50, encoding="utf-8")
    argv = [sys.executable, "-m", "bge_icl_cli", "embed", texts, "-o", tmp_path / "o.npy", "--kind", "corpus",
            "--model", tiny_dir, *CPU]  # fmt: skip
    proc = subprocess.Popen(list(map(str, argv)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    time.sleep(delay)  # during start-up (imports, model loading): the window that used to print a traceback
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the command finished before the signal arrived")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().endswith("bge-icl: interrupted")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A small project: two notes, and the junk a real one holds (a venv, node_modules, .git, a binary)."""
    root = tmp_path / "project"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "protein.md").write_text("Women need about 46 grams of protein per day.", encoding="utf-8")
    (root / "README.TXT").write_text("A summit is the highest point of a mountain.", encoding="utf-8")
    for junk in (".venv/lib", "node_modules/pkg", ".git/info", "sub/.hidden"):
        (root / junk).mkdir(parents=True)
        (root / junk / "junk.txt").write_text("junk " * 20, encoding="utf-8")
    (root / "docs" / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))  # not UTF-8
    return root


def test_search_skips_hidden_and_dependency_folders_and_unreadable_files(tiny_dir: Path, project: Path) -> None:
    pytest.importorskip("langchain_text_splitters")
    proc = bge_icl("search", project, "--query", "protein", "--model", tiny_dir, *CPU, "-q")
    assert proc.returncode == 0, proc.stderr
    assert "2 chunks from 3 file(s)" in proc.stdout  # protein.md, README.TXT and the unreadable one
    assert "junk" not in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if "unreadable" in line]
    latin1 = project / "docs" / "latin1.txt"
    assert warnings == [f"bge-icl: warning: skipped 1 unreadable file(s) (not UTF-8 text): {latin1}"]
    everything = ["--include-hidden", "-k", "20"]
    proc = bge_icl("search", project, "--query", "protein", *everything, "--model", tiny_dir, *CPU, "-q")
    assert proc.returncode == 0, proc.stderr
    assert "6 chunks from 7 file(s)" in proc.stdout and proc.stdout.count("junk.txt") == 4


def test_quiet_and_show_progress_false_hide_the_loading_bar(tiny_dir: Path, tmp_path: Path) -> None:
    texts = tmp_path / "in.txt"
    texts.write_text("hello\n", encoding="utf-8")
    loud = bge_icl("embed", texts, "-o", tmp_path / "a.npy", "--kind", "corpus", "--model", tiny_dir, *CPU)
    quiet = bge_icl("embed", texts, "-o", tmp_path / "b.npy", "--kind", "corpus", "--model", tiny_dir, *CPU, "-q")
    assert loud.returncode == quiet.returncode == 0
    assert "%|" in loud.stderr  # the bars a user sees without --quiet (weight loading on transformers 5, encoding)
    assert "Loading" not in quiet.stderr and "it/s" not in quiet.stderr and "%|" not in quiet.stderr
    code = f"from bge_icl import ICLEmbedder\nICLEmbedder({str(tiny_dir)!r}, devices='cpu', show_progress=False)"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "%|" not in proc.stderr and "Loading" not in proc.stderr
