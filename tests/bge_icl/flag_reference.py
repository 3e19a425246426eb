"""A line-by-line transcription of FlagEmbedding 1.4.2's ICL encode loops, for transformers 4.x and 5.x.

FlagEmbedding itself only imports with transformers 4.x; this transcription lets the 5.x suite check
bge_icl against the same algorithm (tokenizer calls with FlagEmbedding's arguments, the decode
round trip, ``tokenizer.pad``, default position ids, its ``last_token_pool``). The 4.x suite also
checks the transcription and bge_icl against FlagEmbedding itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def _flag_last_token_pool(last_hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    left_padding = attention_mask[:, -1].sum() == attention_mask.shape[0]
    if left_padding:
        return last_hidden_states[:, -1]
    sequence_lengths = attention_mask.sum(dim=1) - 1
    return last_hidden_states[torch.arange(last_hidden_states.shape[0]), sequence_lengths]


def _prefix(examples: list[dict[str, str]] | None, fmt: str, instruction: str | None) -> str:
    if not examples:
        return ""
    blocks = [fmt.format(e.get("instruct", instruction), e.get("query", ""), e.get("response", "")) for e in examples]
    return "\n\n".join(blocks) + "\n\n"


@torch.no_grad()
def _run(model: Any, tokenizer: Any, features: list[dict[str, list[int]]], batch_size: int) -> np.ndarray:
    order = np.argsort([-len(x["input_ids"]) for x in features])
    ordered = [features[i] for i in order]
    out = []
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start : start + batch_size]
        batch = tokenizer.pad({k: [f[k] for f in chunk] for k in chunk[0]}, padding=True, return_tensors="pt")
        hidden = model(**batch, return_dict=True).last_hidden_state
        out.append(F.normalize(_flag_last_token_pool(hidden, batch["attention_mask"]), dim=-1).float().numpy())
    return np.concatenate(out)[np.argsort(order)]


def flag_encode_queries(
    model: Any,
    tokenizer: Any,
    queries: list[str],
    *,
    examples: list[dict[str, str]] | None,
    instruction: str | None,
    max_length: int = 512,
    batch_size: int = 256,
    query_format: str = "<instruct>{}\n<query>{}",
    examples_format: str = "<instruct>{}\n<query>{}\n<response>{}",
    suffix: str = "\n<response>",
) -> np.ndarray:
    """FlagEmbedding's ``encode_queries_single_device``."""
    texts = queries if instruction is None else [query_format.format(instruction, q) for q in queries]
    prefix = _prefix(examples, examples_format, instruction)
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    suffix_ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]
    len_1 = len(tokenizer("<s>", add_special_tokens=False)["input_ids"])
    len_2 = len(tokenizer(f"{suffix}</s>", add_special_tokens=False)["input_ids"])
    new_max_length = (len(prefix_ids) + len(suffix_ids) + max_length + 8) // 8 * 8 + 8
    cut = tokenizer(texts, truncation=True, max_length=max_length - len_1 - len_2, add_special_tokens=False)
    decoded = tokenizer.batch_decode(cut["input_ids"])
    full = tokenizer([prefix + d + suffix for d in decoded], truncation=True, max_length=new_max_length)
    features = [{k: full[k][i] for k in full} for i in range(len(texts))]
    return _run(model, tokenizer, features, batch_size)


def flag_encode_corpus(
    model: Any, tokenizer: Any, corpus: list[str], *, max_length: int = 512, batch_size: int = 256
) -> np.ndarray:
    """FlagEmbedding's ``encode_single_device`` (passages: no instruction)."""
    enc = tokenizer(corpus, truncation=True, max_length=max_length)
    features = [{k: enc[k][i] for k in enc} for i in range(len(corpus))]
    return _run(model, tokenizer, features, batch_size)
