"""The rebuilt tokenizer is bge-en-icl's: the notebook's ids, special tokens, left padding."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from bge_icl.tokenization import PromptTokenizer


def test_notebook_ids(tiny_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    assert tok("embedding")["input_ids"] == [1, 28643, 2]
    assert tok("I love machine learning and nlp")["input_ids"] == [1, 315, 2016, 5599, 5168, 304, 307, 12312, 2]


def test_batch_is_left_padded_with_unk(tiny_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    batch = tok(["embedding", "I love machine learning and nlp"], padding=True)
    assert batch["input_ids"][0] == [0, 0, 0, 0, 0, 0, 1, 28643, 2]
    assert batch["attention_mask"][0] == [0] * 6 + [1] * 3
    assert tok.padding_side == "left"
    assert tok.pad_token_id == 0


def test_icl_special_tokens(tiny_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    assert len(tok) == 32003
    assert tok.convert_tokens_to_ids(["<instruct>", "<query>", "<response>"]) == [32000, 32001, 32002]
    # Special tokens are never split, and legacy mode puts "▁" (28705) before the newline.
    assert tok("\n<response>", add_special_tokens=False)["input_ids"] == [28705, 13, 32002]


def test_layout_matches_flagembedding_counts(tiny_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    pt = PromptTokenizer(tok)
    assert (pt.head, pt.tail) == ([1], [2])
    # FlagEmbedding's _len_1 and _len_2, computed its way, equal ours.
    len_1 = len(tok("<s>", add_special_tokens=False)["input_ids"])
    len_2 = len(tok("\n<response></s>", add_special_tokens=False)["input_ids"])
    plan = pt.query_plan("", "\n<response>", 512)
    assert plan.query_budget == 512 - len_1 - len_2


def test_no_eos_variant_really_lacks_eos(tiny_no_eos_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_no_eos_dir)
    assert tok("embedding")["input_ids"] == [1, 28643]
    pt = PromptTokenizer(tok)
    assert (pt.head, pt.tail) == ([1], [2])  # the EOS guarantee adds it back
