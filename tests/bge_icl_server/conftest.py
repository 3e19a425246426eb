"""One real server (uvicorn on a thread, 127.0.0.1, a free port) for the whole session, and the local embedders
its vectors are compared with. The local embedders are built here from the example files directly, not through
the server's code."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from bge_icl import WEB_SEARCH_INSTRUCTION, ICLEmbedder
from bge_icl_server import RunningServer, ServerConfig, load_example_set, serve_in_thread

SERVED = "tiny-icl"
ZERO_SHOT_INSTRUCTION = "Given a claim, retrieve documents that support or refute it."
QA_INSTRUCTION = "Given a question, retrieve passages that answer it."
QA_EXAMPLES = [
    {"query": "how tall is mount everest", "response": "Mount Everest is 8,849 metres high."},
    {"query": "what do pandas eat", "response": "Giant pandas eat bamboo almost exclusively."},
]
QUERIES = ["how much protein should a female eat", "summit define", "Ünïcödé ☃ café — naïve"]
PASSAGES = [
    "As a general guideline, the CDC's average requirement of protein for women ages 19 to 70 is 46 grams per day.",
    "Definition of summit: the highest point of a mountain.",
    "数字と日本語のパッセージ",
]


@pytest.fixture(scope="session")
def qa_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("examples") / "qa.json"
    path.write_text(json.dumps(QA_EXAMPLES), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def config(tiny_dir: Path, qa_file: Path) -> ServerConfig:
    """Three model ids: the served name (zero-shot, with an instruction), ``web-search`` (bundled), ``qa`` (a file);
    ``dimensions`` below the model's allowed."""
    return ServerConfig(
        model=str(tiny_dir),
        served_name=SERVED,
        example_sets={
            "web-search": load_example_set("web-search"),
            "qa": load_example_set(str(qa_file), QA_INSTRUCTION),
        },
        instruction=ZERO_SHOT_INSTRUCTION,
        allow_dimensions=True,
        options={"devices": "cpu", "dtype": "float32"},  # the tests compare with local vectors within 1e-5
    )


@pytest.fixture(scope="session")
def server(config: ServerConfig) -> Iterator[RunningServer]:
    with serve_in_thread(config) as running:
        yield running


@pytest.fixture(scope="session")
def local(tiny_dir: Path) -> dict[str, ICLEmbedder]:
    """The local embedder of each model id, as a user would build it without the server."""
    web = json.loads(resources.files("bge_icl").joinpath("data/examples/web-search.json").read_text("utf-8"))
    common = {"devices": "cpu", "dtype": "float32", "show_progress": False}
    return {
        SERVED: ICLEmbedder(str(tiny_dir), query_instruction_for_retrieval=ZERO_SHOT_INSTRUCTION, **common),
        "web-search": ICLEmbedder(
            str(tiny_dir), examples_for_task=web, query_instruction_for_retrieval=WEB_SEARCH_INSTRUCTION, **common
        ),
        "qa": ICLEmbedder(
            str(tiny_dir), examples_for_task=QA_EXAMPLES, query_instruction_for_retrieval=QA_INSTRUCTION, **common
        ),
    }


def as_vector(embedding: object) -> np.ndarray:
    """One embedding of a response: a list of floats, or base64 of little-endian float32 (as OpenAI sends it)."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.asarray(embedding, dtype=np.float64)


def max_diff(got: object, expected: np.ndarray) -> float:
    nested = isinstance(got, list) and isinstance(got[0], (list, str, np.ndarray))
    rows = [as_vector(row) for row in got] if nested else as_vector(got)
    return float(np.abs(np.asarray(rows, dtype=np.float64) - expected).max())
