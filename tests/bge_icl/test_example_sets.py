"""The one example-set loader: an existing file first, then a bundled set's name; errors name the file or set."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bge_icl.errors import OptionValueError
from bge_icl.example_sets import load_example_set
from bge_icl.quickstart import bundled_examples

MINE = [{"instruct": "Mine.", "query": "q", "response": "r"}]


def test_a_bundled_name_loads_the_bundled_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    loaded = load_example_set("web-search")
    assert list(loaded.examples) == bundled_examples("web-search")
    assert loaded.bundled and loaded.source == "example set 'web-search'"
    assert loaded.shared_instruct == bundled_examples("web-search")[0]["instruct"]


def test_an_existing_file_wins_over_a_bundled_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("web-search").write_bytes(b"\xef\xbb\xbf" + json.dumps(MINE).encode())  # a BOM is dropped
    loaded = load_example_set("web-search")
    assert list(loaded.examples) == MINE and not loaded.bundled and loaded.shared_instruct == "Mine."


@pytest.mark.parametrize(
    ("spec", "content", "message"),
    [
        ("nope", None, "unknown example set 'nope': bundled sets are web-search; or a JSON file"),
        ("missing.json", None, "examples file missing.json does not exist"),
        ("bad.json", b"[{", "examples file bad.json is not valid JSON: "),
        ("latin.json", b'[{"query": "caf\xe9"}]',
         "examples file latin.json line 1 is not UTF-8: byte 0xe9 at column 16"),
        ("keys.json", b'[{"query": "q"}]', "examples file keys.json: examples_for_task[0] is missing 'response'"),
    ],
)
def test_errors_name_the_file_or_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str,
                                     content: bytes | None, message: str) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    if content is not None:
        Path(spec).write_bytes(content)
    with pytest.raises(OptionValueError, match=re.escape(message)) as info:
        load_example_set(spec)
    assert info.value.option == "examples_for_task"
