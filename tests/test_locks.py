"""The locked test environments: ``locks/check.py`` catches every way a venv can differ from its lock, the locks
pin exact versions, and the published package keeps ranges (a library must not pin its users)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "locks"


def _load_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("locks_check", LOCKS / "check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = _load_check()
TORCH = {"torch": "2.13.0"}


def test_a_venv_equal_to_its_lock_passes() -> None:
    have = {"transformers": "5.25.0", "numpy": "2.3.1", "torch": "2.13.0+cpu", "pip": "23.2.1", "bge-icl": "0.1.0"}
    assert check.differences(have, {"transformers": "5.25.0", "numpy": "2.3.1"}, TORCH) == []
    cuda_build = {**have, "torch": "2.13.0", "nvidia-cublas-cu12": "12.8.4.1", "triton": "3.5.0"}
    assert check.differences(cuda_build, {"transformers": "5.25.0", "numpy": "2.3.1"}, TORCH) == []


def test_every_difference_is_named() -> None:
    have = {"transformers": "5.26.0", "torch": "2.14.0", "rich": "14.0.0"}
    pins = {"transformers": "5.25.0", "numpy": "2.3.1"}
    assert check.differences(have, pins, TORCH) == [
        "numpy==2.3.1 is locked but not installed",
        "transformers 5.26.0 is installed, 5.25.0 is locked",
        "torch 2.14.0 is installed, 2.13.0 is locked (locks/torch.txt)",
        "rich 14.0.0 is installed but not in the lock",
    ]


def test_names_are_compared_normalized(tmp_path: Path) -> None:
    lock = tmp_path / "x.txt"
    lock.write_text("# header\nPyYAML==6.0.2\n    # via x\nsentence_transformers==5.1.0 ; python_version >= '3'\n")
    pins = check.read_pins(lock)
    assert pins == {"pyyaml": "6.0.2", "sentence-transformers": "5.1.0"}
    have = {"pyyaml": "6.0.2", "sentence-transformers": "5.1.0", "torch": "2.13.0"}
    assert check.differences(have, pins, TORCH) == []


def test_a_lock_line_that_is_no_exact_pin_is_refused(tmp_path: Path) -> None:
    lock = tmp_path / "x.txt"
    lock.write_text("numpy>=2\n")
    with pytest.raises(SystemExit, match=re.escape(f"{lock}:1: not an exact pin (name==version): 'numpy>=2'")):
        check.read_pins(lock)


def test_this_venv_matches_its_lock() -> None:
    """The suite's own environment (``.venv``, built by ``make test``) holds exactly ``locks/test.txt``."""
    if not (ROOT / ".venv").exists() or Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip("runs in the repository's .venv, which make test builds from locks/test.txt")
    have = check.installed(sys.executable)
    pins = check.read_pins(LOCKS / "test.txt")
    assert check.differences(have, pins, check.read_pins(LOCKS / "torch.txt")) == []


@pytest.mark.parametrize("env", ["test", "ref", "floor", "infinity"])
def test_every_lock_pins_exact_versions(env: str) -> None:
    pins = check.read_pins(LOCKS / f"{env}.txt")
    assert len(pins) > 10
    assert "torch" not in pins  # torch comes from locks/torch.txt, the CPU build where the sources offer it


def test_the_published_package_keeps_ranges() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    user_facing = list(project["dependencies"])
    for extra, requirements in project["optional-dependencies"].items():
        if extra != "test":
            user_facing += requirements
    assert [r for r in user_facing if "==" in r] == []
