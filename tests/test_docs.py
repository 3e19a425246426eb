"""Every ```python block of README.md and docs/*.md runs, on the tiny checkpoint, in a fresh namespace.

The only edit made to a block is the model name: "BAAI/bge-en-icl" becomes the tiny checkpoint's path. A block
that cannot run with that edit alone is a docs bug: fix the block, not this harness.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MODEL = "BAAI/bge-en-icl"
_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
# A block that imports one of these is skipped (not failed) where the package is not installed.
_OPTIONAL = {
    "langchain_core": "langchain_core",
    "langchain_bge_icl": "langchain_core",
    "langchain_text_splitters": "langchain_text_splitters",
    "llama_index": "llama_index.core",
    "llamaindex_bge_icl": "llama_index.core",
    "ray": "ray.data",
    "ray_bge_icl": "ray.data",
    "langchain_classic": "langchain_classic",
    "faiss": "faiss",
    "mteb": "mteb",
    "mteb_bge_icl": "mteb",
    "bge_icl.evaluation": "pytrec_eval",
    "sentence_transformers": "sentence_transformers",
    "bge_icl.precision": "sentence_transformers",
    "bge_icl_server": "fastapi",
    "ray_bge_icl.serve": "ray.serve",
    "openai": "openai",
    "langchain_nvidia_ai_endpoints": "langchain_nvidia_ai_endpoints",
    "llama_index.embeddings.nvidia": "llama_index.embeddings.nvidia",
    "pgserver": "pgserver",
    "psycopg": "psycopg",
    "langchain_postgres": "langchain_postgres",
    "langchain_openai": "langchain_openai",
    "llama_index.embeddings.openai": "llama_index.embeddings.openai",
}


def python_blocks() -> list[tuple[str, int, str]]:
    """(file name relative to the repo, block index within the file, code) for every ```python block."""
    blocks = []
    for path in DOC_FILES:
        for i, match in enumerate(_FENCE.finditer(path.read_text(encoding="utf-8"))):
            blocks.append((str(path.relative_to(ROOT)), i, match.group(1)))
    return blocks


BLOCKS = python_blocks()


def test_blocks_were_found() -> None:
    names = {name for name, _, _ in BLOCKS}
    assert {"README.md", "docs/core.md", "docs/langchain.md", "docs/llamaindex.md", "docs/concepts.md"} <= names


def test_mkdocs_nav_lists_every_page() -> None:
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    pages = [next(iter(entry.values())) for entry in config["nav"]]
    assert sorted(pages) == sorted(p.name for p in (ROOT / "docs").glob("*.md"))


@pytest.fixture
def llamaindex_settings():
    """Restore LlamaIndex's global Settings after a block that sets them."""
    try:
        from llama_index.core import Settings
    except ImportError:
        yield
        return
    saved = dict(vars(Settings))
    yield
    vars(Settings).update(saved)


@pytest.mark.parametrize(("name", "index", "code"), BLOCKS, ids=[f"{name}[{i}]" for name, i, _ in BLOCKS])
def test_python_block_runs(
    name: str,
    index: int,
    code: str,
    tiny_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    llamaindex_settings: None,
) -> None:
    for module, requirement in _OPTIONAL.items():
        if re.search(rf"^\s*(from|import)\s+{re.escape(module)}\b", code, re.MULTILINE):
            pytest.importorskip(requirement)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # CPU only
    source = code.replace(MODEL, str(tiny_dir))
    namespace: dict[str, object] = {"__name__": f"docs_block_{index}"}
    exec(compile(source, f"{name}[{index}]", "exec"), namespace)


def test_core_docs_list_every_option_once() -> None:
    """docs/core.md's options table names exactly the options EmbedderOptions declares."""
    from bge_icl import EmbedderOptions

    table = (ROOT / "docs" / "core.md").read_text(encoding="utf-8").split("## Options", 1)[1].split("\n\n| option")[1]
    rows = [line for line in table.split("\n\n")[0].splitlines() if line.startswith("| `")]
    names = [name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])]
    assert sorted(names) == sorted(EmbedderOptions.OPTION_NAMES)
