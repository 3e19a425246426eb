"""The model card's model and example data: its hub id, two web-search examples, two queries, two passages.

``bge-icl demo`` (bge_icl_cli/cli.py) embeds them and prints the 2x2 similarity matrix; tests use them as the seed
notebook's inputs.
"""

from __future__ import annotations

import importlib.resources
import json

DEFAULT_MODEL = "BAAI/bge-en-icl"
"""The model bge-icl embeds with: the ``model_name`` option's default, ``bge-icl --model``'s, MTEB's name for it."""


def bundled_example_sets() -> list[str]:
    """Names of the example sets shipped with bge-icl (``bge_icl/data/examples/*.json``), e.g. ``web-search``."""
    folder = importlib.resources.files("bge_icl").joinpath("data", "examples")
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def bundled_examples(name: str) -> list[dict[str, str]]:
    """The examples of the bundled set ``name`` (one of :func:`bundled_example_sets`), as a list of dicts."""
    path = importlib.resources.files("bge_icl").joinpath("data", "examples", f"{name}.json")
    data: list[dict[str, str]] = json.loads(path.read_text(encoding="utf-8"))
    return data


# The model card's two web-search examples, shipped as the bundled example set "web-search".
EXAMPLES: list[dict[str, str]] = bundled_examples("web-search")
QUERIES = ["how much protein should a female eat", "summit define"]
DOCUMENTS = [
    "As a general guideline, the CDC's average requirement of protein for women ages 19 to 70 is 46 grams per "
    "day. But, as you can see from this chart, you'll need to increase that if you're expecting or training for "
    "a marathon. Check out the chart below to see how much protein you should be eating each day.",
    "Definition of summit for English Language Learners. : 1  the highest point of a mountain : the top of a "
    "mountain. : 2  the highest level. : 3  a meeting or series of meetings between the leaders of two or more "
    "governments.",
]
