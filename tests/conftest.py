"""Session fixtures: seeded random-weight bge-en-icl checkpoints with the real tokenizer, built offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from bge_icl.testing import build_checkpoint

NOTEBOOK_EXAMPLES = [
    {
        "instruct": "Given a web search query, retrieve relevant passages that answer the query.",
        "query": "what is a virtual interface",
        "response": "A virtual interface is a software-defined abstraction that mimics the behavior and "
        "characteristics of a physical network interface. It allows multiple logical network connections to "
        "share the same physical network interface, enabling efficient utilization of network resources. "
        "Virtual interfaces are commonly used in virtualization technologies such as virtual machines and "
        "containers to provide network connectivity without requiring additional hardware. They can be "
        "configured with their own IP addresses, MAC addresses, and other network settings, making them "
        "versatile tools for managing network traffic and isolating different network environments.",
    },
    {
        "instruct": "Given a web search query, retrieve relevant passages that answer the query.",
        "query": "causes of back pain in female for a week",
        "response": "Back pain in females lasting a week can stem from various factors. Common causes include "
        "muscle strain due to lifting heavy objects or improper posture, spinal issues like herniated discs or "
        "osteoporosis, menstrual cramps causing referred pain, urinary tract infections, or pelvic inflammatory "
        "disease. Pregnancy-related changes can also contribute. Stress and lack of exercise may exacerbate "
        "symptoms. Proper diagnosis by a healthcare professional is crucial for effective treatment and management.",
    },
]
NOTEBOOK_QUERIES = ["how much protein should a female eat", "summit define"]
NOTEBOOK_DOCUMENTS = [
    "As a general guideline, the CDC's average requirement of protein for women ages 19 to 70 is 46 grams per "
    "day. But, as you can see from this chart, you'll need to increase that if you're expecting or training for "
    "a marathon. Check out the chart below to see how much protein you should be eating each day.",
    "Definition of summit for English Language Learners. : 1  the highest point of a mountain : the top of a "
    "mountain. : 2  the highest level. : 3  a meeting or series of meetings between the leaders of two or more "
    "governments.",
]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-64 MistralModel with random weights (seed 0) and bge-en-icl's tokenizer."""
    return build_checkpoint(tmp_path_factory.mktemp("tiny-bge-icl"), seed=0)


@pytest.fixture(scope="session")
def tiny_no_eos_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights as ``tiny_dir``, but a tokenizer saved with ``add_eos_token=False``."""
    return build_checkpoint(tmp_path_factory.mktemp("tiny-bge-icl-no-eos"), seed=0, add_eos_token=False)
