"""``ServerConfig`` and example sets: validated when built, before any model loads; picklable and JSON-able (Ray
Serve builds the app in each replica from the same config)."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest

from bge_icl import WEB_SEARCH_INSTRUCTION
from bge_icl_server import ExampleSet, ServerConfig, bundled_example_sets, load_example_set
from tests.bge_icl_server.conftest import QA_EXAMPLES, QA_INSTRUCTION


def test_bundled_set_brings_its_own_instruction() -> None:
    assert "web-search" in bundled_example_sets()
    web = load_example_set("web-search", instruction="ignored for a bundled set")
    assert web.instruction == WEB_SEARCH_INSTRUCTION and len(web.examples) >= 2


def test_file_set_takes_the_instruction_or_the_one_its_examples_share(tmp_path: Path) -> None:
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(QA_EXAMPLES))
    assert load_example_set(str(plain), QA_INSTRUCTION) == ExampleSet(examples=QA_EXAMPLES, instruction=QA_INSTRUCTION)
    shared = tmp_path / "shared.json"
    shared.write_text(json.dumps([{**e, "instruct": "Find it."} for e in QA_EXAMPLES]))
    assert load_example_set(str(shared)).instruction == "Find it."
    with pytest.raises(ValueError, match=re.escape(f"examples file {plain}: ") + ".*has no 'instruct' and "
                       "query_instruction_for_retrieval is None"):  # fmt: skip
        load_example_set(str(plain))


@pytest.mark.parametrize(
    ("spec", "content", "message"),
    [
        ("nope", None, "unknown example set 'nope': bundled sets are web-search; or a JSON file"),
        ("missing.json", None, "examples file missing.json does not exist"),
        ("bad.json", "[{", "examples file bad.json is not valid JSON: "),
        ("dict.json", '{"query": "q"}', "examples file dict.json: "),
        ("keys.json", '[{"query": "q"}]', "examples file keys.json: "),
    ],
)
def test_example_set_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str, content: str | None,
                            message: str) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    if content is not None:
        Path(spec).write_text(content)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_example_set(spec, "An instruction.")


def test_defaults_and_ids(tiny_dir: Path) -> None:
    config = ServerConfig(model=str(tiny_dir), example_sets={"web-search": load_example_set("web-search")})
    assert config.served_name == tiny_dir.name  # a checkpoint directory: its name
    assert config.model_ids == (tiny_dir.name, "web-search")
    assert ServerConfig(model="BAAI/bge-en-icl").served_name == "BAAI/bge-en-icl"  # a hub id: itself
    assert (config.max_inputs, config.max_request_bytes, config.max_queue_rows) == (2048, 16 * 2**20, 8192)
    assert config.api_key is None and "api_key" not in repr(ServerConfig(model="m", api_key="k"))


def test_config_travels_to_another_process(tiny_dir: Path) -> None:
    config = ServerConfig(model=str(tiny_dir), example_sets={"web-search": load_example_set("web-search")},
                          api_key="k", options={"devices": "cpu", "batch_size": 8})  # fmt: skip
    assert pickle.loads(pickle.dumps(config)) == config
    assert ServerConfig.model_validate_json(config.model_dump_json()) == config
    with pytest.raises(ValueError, match="frozen"):
        config.api_key = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"options": {"device": "cpu"}}, TypeError, "unknown option 'device' (did you mean devices?)"),
        ({"options": {"batch_size": 0}}, ValueError, "batch_size must be a positive int, got 0"),
        ({"options": {"examples_for_task": []}}, ValueError, "options may not set ['examples_for_task']"),
        ({"options": {"model_name": "x"}}, ValueError, "options may not set ['model_name']"),
        ({"served_name": "web-search", "example_sets": {"web-search": ExampleSet(examples=QA_EXAMPLES,
                                                                              instruction="I.")}},
         ValueError, "the served name 'web-search' is also an example set's name"),
        ({"example_sets": {" ": ExampleSet(examples=QA_EXAMPLES, instruction="I.")}}, ValueError,
         "example set name ' ' is not a model id"),
        ({"max_inputs": 0}, ValueError, "max_inputs\n  Input should be greater than 0"),
        ({"max_queue_rows": -1}, ValueError, "max_queue_rows\n  Input should be greater than 0"),
        ({"api_keys": "k"}, ValueError, "api_keys\n  Extra inputs are not permitted"),
        ({"api_key": ""}, ValueError, "the API key is empty (an unset variable?): give a key, or none at all to "
                                      "serve without one"),
        ({"api_key": "  "}, ValueError, "the API key is empty"),
        ({"api_key": "clé-secrète"}, ValueError, "the API key holds a space, a control or a non-ASCII character, "
                                                 "which an HTTP header cannot carry: use printable ASCII"),
        ({"api_key": "two words"}, ValueError, "the API key holds a space"),
        ({"example_sets": {"faq:query": ExampleSet(examples=QA_EXAMPLES, instruction="I.")}}, ValueError,
         "example set name 'faq:query' is not a model id: use a non-empty name without outer spaces, not ending in "
         "':query'"),
        ({"served_name": "m:query"}, ValueError, "the served name 'm:query' ends in ':query', which names a model "
                                                 "id's queries"),
    ],
)
def test_bad_config_fails_when_built(fields: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        ServerConfig(model="BAAI/bge-en-icl", **fields)  # type: ignore[arg-type]


def test_example_set_needs_examples_and_an_instruction() -> None:
    with pytest.raises(ValueError, match="at least 1 item"):
        ExampleSet(examples=())
    with pytest.raises(ValueError, match=re.escape("examples_for_task[0] has no 'instruct'")):
        ExampleSet(examples=QA_EXAMPLES)
