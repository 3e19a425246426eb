"""Inputs shared by the reference-transcription and FlagEmbedding parity tests."""

from __future__ import annotations

from tests.conftest import NOTEBOOK_DOCUMENTS, NOTEBOOK_EXAMPLES, NOTEBOOK_QUERIES

WEB = "Given a web search query, retrieve relevant passages that answer the query."
LONG_QUERY = "what are all the reasons " + "why the sky looks blue at noon and red at dusk " * 30
LONG_PASSAGE = "Rayleigh scattering makes short wavelengths scatter more. " * 120
UNICODE = [
    "Ünïcödé ☃ café — naïve",
    "数字と日本語のクエリ",
    "emoji 😀🚀 and RTL שלום עולם",
    "  two  spaces\tand\ttabs  ",
]

QUERIES = [*NOTEBOOK_QUERIES, LONG_QUERY, *UNICODE, "", "a {0} b }{"]
PASSAGES = [*NOTEBOOK_DOCUMENTS, LONG_PASSAGE, *UNICODE, ""]
NO_INSTRUCT_EXAMPLES = [{"query": e["query"], "response": e["response"]} for e in NOTEBOOK_EXAMPLES]

# (id, examples, instruction, query_max_length, passage_max_length)
CONFIGS = [
    ("zero-shot", None, None, 512, 512),
    ("zero-shot+instruction", None, WEB, 512, 512),
    ("notebook-examples", NOTEBOOK_EXAMPLES, WEB, 512, 512),
    ("examples-no-instruction", NOTEBOOK_EXAMPLES, None, 512, 512),
    ("example-without-instruct", NO_INSTRUCT_EXAMPLES, WEB, 512, 512),
    ("short-limits", NOTEBOOK_EXAMPLES, WEB, 24, 32),
]
