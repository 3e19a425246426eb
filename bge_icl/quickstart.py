"""The model card's model and example data: its hub id, two web-search examples, two queries, two passages.

``bge-icl demo`` (bge_icl_cli/cli.py) embeds them and prints the 2x2 similarity matrix; tests use them as the seed
notebook's inputs.
"""

from __future__ import annotations

import importlib.resources
import json

DEFAULT_MODEL = "BAAI/bge-en-icl"
"""The model bge-icl embeds with: the ``model_name`` option's default, ``bge-icl --model``'s, MTEB's name for it."""
# The model card's two web-search examples, shipped as the bundled example set "web-search".
EXAMPLES: list[dict[str, str]] = json.loads(
    importlib.resources.files("bge_icl").joinpath("data", "examples", "web-search.json").read_text(encoding="utf-8")
)
QUERIES = ["how much protein should a female eat", "summit define"]
DOCUMENTS = [
    "As a general guideline, the CDC's average requirement of protein for women ages 19 to 70 is 46 grams per "
    "day. But, as you can see from this chart, you'll need to increase that if you're expecting or training for "
    "a marathon. Check out the chart below to see how much protein you should be eating each day.",
    "Definition of summit for English Language Learners. : 1  the highest point of a mountain : the top of a "
    "mountain. : 2  the highest level. : 3  a meeting or series of meetings between the leaders of two or more "
    "governments.",
]
