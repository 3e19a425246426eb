"""Check that a virtual environment holds exactly what its lock says.

Usage: ``python locks/check.py VENV_PYTHON LOCK_FILE``. Standard library only (it runs before anything is installed
in the tools venv). It asks ``VENV_PYTHON`` for every installed distribution and compares it with ``LOCK_FILE``
(``name==version`` lines, as ``uv pip compile`` writes them) and with ``locks/torch.txt``:

- every locked package must be installed at exactly the locked version;
- torch must be the version in ``locks/torch.txt`` (a local build label such as ``+cpu`` is allowed);
- nothing else may be installed, apart from the venv's own pip / setuptools, this package (``bge-icl``) and what a
  CUDA build of torch brings (``nvidia-*``, ``triton``) on a machine whose sources serve that build.

Exit 0 when all holds; else 1, with one line per difference and what to do. ``make check-locks`` (part of
``make lint``, so of ``make test``) runs it for every test environment.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ALWAYS_ALLOWED = {"pip", "setuptools", "wheel", "bge-icl"}
TORCH_BUILD_EXTRAS = ("nvidia-", "triton")  # what a CUDA build of torch brings beside the CPU build's dependencies
LIST_INSTALLED = (
    "import importlib.metadata as m, json; "
    "print(json.dumps(sorted({(d.metadata['Name'], d.version) for d in m.distributions() if d.metadata['Name']})))"
)
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;#]+)")


def normalize(name: str) -> str:
    """PEP 503 name: lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(lock: Path) -> dict[str, str]:
    """``{normalized name: version}`` of every ``name==version`` line in ``lock``."""
    pins: dict[str, str] = {}
    for number, line in enumerate(lock.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#") or text.startswith("-"):
            continue
        match = PIN.match(text)
        if match is None:
            msg = f"{lock}:{number}: not an exact pin (name==version): {text!r}"
            raise SystemExit(msg)
        pins[normalize(match.group(1))] = match.group(3)
    return pins


def installed(python: str) -> dict[str, str]:
    """``{normalized name: version}`` of what ``python`` has installed."""
    out = subprocess.run([python, "-c", LIST_INSTALLED], check=True, capture_output=True, text=True).stdout
    return {normalize(name): version for name, version in json.loads(out)}


def differences(have: dict[str, str], pins: dict[str, str], torch_pin: dict[str, str]) -> list[str]:
    """One line per way ``have`` differs from the lock ``pins`` and the torch pin."""
    problems = []
    for name, version in sorted(pins.items()):
        if name not in have:
            problems.append(f"{name}=={version} is locked but not installed")
        elif have[name] != version:
            problems.append(f"{name} {have[name]} is installed, {version} is locked")
    for name, version in sorted(torch_pin.items()):
        base = have.get(name, "").split("+")[0]
        if base != version:
            problems.append(f"{name} {have.get(name, '(none)')} is installed, {version} is locked (locks/torch.txt)")
    extra = set(have) - set(pins) - set(torch_pin) - ALWAYS_ALLOWED
    for name in sorted(n for n in extra if not n.startswith(TORCH_BUILD_EXTRAS)):
        problems.append(f"{name} {have[name]} is installed but not in the lock")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    python, lock = argv[0], Path(argv[1])
    problems = differences(installed(python), read_pins(lock), read_pins(HERE / "torch.txt"))
    if problems:
        print(f"{python} does not match {lock}:", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        print("Rebuild it from the lock (make clean; make test), or refresh the locks (make lock).", file=sys.stderr)
        return 1
    print(f"{python}: matches {lock} ({len(read_pins(lock))} packages)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
