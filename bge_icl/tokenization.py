"""Tokenization with FlagEmbedding's truncation rules, plus the EOS guarantee.

Every sequence built here is ``head + content + tail``: ``head`` is what the tokenizer puts before
the text (BOS), ``tail`` what it puts after (EOS). The tail always ends with the tokenizer's EOS id,
whatever ``add_eos_token`` says, so the pooled token is always EOS.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Tokenized:
    """Token ids for a batch of texts and how many were truncated.

    Attributes:
        ids: One list of token ids per text, special tokens included; each ends with EOS.
        truncated: Indices (into the input) of the texts that were cut.
    """

    ids: list[list[int]]
    truncated: list[int]


@dataclass(frozen=True)
class QueryPlan:
    """The token-level pieces of a query prompt that do not depend on the query text.

    Attributes:
        prefix: The few-shot prefix string (may be '').
        suffix: The string appended after the query (``"\\n<response>"``).
        prefix_len: Number of content tokens of ``prefix``.
        suffix_len: Number of content tokens of ``suffix``.
        query_budget: Content tokens left for the (instruction-formatted) query.
        full_budget: Content tokens allowed for ``prefix + query + suffix``.
    """

    prefix: str
    suffix: str
    prefix_len: int
    suffix_len: int
    query_budget: int
    full_budget: int


@dataclass(frozen=True)
class PrefixSplit:
    """The start of every query prompt that the cached prefix ids cover, so only the rest is tokenized.

    Attributes:
        text: That start of the prompt string; it ends with a special token (``<query>``, or the last example's
            ``<response>``).
        content: Its token ids without the head (BOS): the start of the cached ids, minus BOS.
    """

    text: str
    content: tuple[int, ...]


class PromptTokenizer:
    """Wraps a Hugging Face tokenizer with bge-en-icl's query and passage rules.

    Args:
        tokenizer: A ``transformers`` tokenizer. It must define an EOS token.

    Raises:
        ValueError: The tokenizer has no EOS token.
    """

    def __init__(self, tokenizer: Any) -> None:
        if tokenizer.eos_token_id is None:
            msg = (
                f"the tokenizer of {getattr(tokenizer, 'name_or_path', '?')!r} has no EOS token; "
                "bge-en-icl pools the hidden state of the final EOS token, so one is required"
            )
            raise ValueError(msg)
        self.tokenizer = tokenizer
        self.eos_id: int = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad_id: int = int(pad) if pad is not None else self.eos_id
        # Fast tokenizers are not safe to call from several threads at once ("Already borrowed").
        self._lock = threading.Lock()
        self.head, self.tail = self._special_layout()

    def _special_layout(self) -> tuple[list[int], list[int]]:
        probe = "a"
        with_special = self.tokenizer(probe)["input_ids"]
        bare = self.tokenizer(probe, add_special_tokens=False)["input_ids"]
        for start in range(len(with_special) - len(bare) + 1):
            if with_special[start : start + len(bare)] == bare:
                head, tail = with_special[:start], with_special[start + len(bare) :]
                break
        else:  # pragma: no cover - no tokenizer we know of does this
            msg = "cannot locate the text inside the tokenizer's special-token template"
            raise ValueError(msg)
        if not tail or tail[-1] != self.eos_id:
            tail = [*tail, self.eos_id]  # the EOS guarantee
        return list(head), list(tail)

    @property
    def n_special(self) -> int:
        """How many special tokens wrap each sequence (BOS + EOS = 2 for bge-en-icl)."""
        return len(self.head) + len(self.tail)

    def content_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of ``texts`` without special tokens, without truncation."""
        if not texts:
            return []
        with self._lock:
            out = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [list(x) for x in out]

    def decode(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """``batch_decode`` with the tokenizer's defaults, as FlagEmbedding does."""
        with self._lock:
            return list(self.tokenizer.batch_decode([list(x) for x in ids]))

    def wrap(self, content: Sequence[int]) -> list[int]:
        """``head + content + tail``."""
        return [*self.head, *content, *self.tail]

    def passages(self, texts: Sequence[str], max_length: int) -> Tokenized:
        """Tokenize passages, truncated so the whole sequence fits in ``max_length`` tokens."""
        budget = max_length - self.n_special
        content = self.content_ids(texts)
        truncated = [i for i, c in enumerate(content) if len(c) > budget]
        return Tokenized([self.wrap(c[:budget]) for c in content], truncated)

    def query_plan(self, prefix: str, suffix: str, max_length: int) -> QueryPlan:
        """Compute FlagEmbedding's query token budgets for this prefix and suffix.

        The query is cut to ``max_length - len(BOS) - len(suffix + EOS)`` content tokens; the full
        prompt is cut at FlagEmbedding's ``new_max_length``, rounded up to a multiple of 8.
        """
        prefix_len, suffix_len = (len(x) for x in self.content_ids([prefix, suffix]))
        query_budget = max_length - len(self.head) - suffix_len - len(self.tail)
        new_max_length = (prefix_len + suffix_len + max_length + 8) // 8 * 8 + 8
        return QueryPlan(
            prefix=prefix,
            suffix=suffix,
            prefix_len=prefix_len,
            suffix_len=suffix_len,
            query_budget=query_budget,
            full_budget=new_max_length - self.n_special,
        )

    def queries(self, texts: Sequence[str], plan: QueryPlan, split: PrefixSplit | None = None) -> Tokenized:
        """Tokenize instruction-formatted queries the way FlagEmbedding's ``encode_queries`` does.

        The query is tokenized without special tokens, cut to ``plan.query_budget``, decoded back to
        text (FlagEmbedding always makes this round trip, and it can change spacing), then
        ``prefix + decoded + suffix`` is tokenized and wrapped in BOS ... EOS. With ``split``, a prompt
        that starts with ``split.text`` has only the rest tokenized: special tokens cut the text into
        pieces that are tokenized independently, so the ids are the same (see :meth:`prefix_split`).
        """
        prompts, truncated = self.prompts(texts, plan)
        full = self._prompt_ids(prompts, split)
        truncated |= {i for i, c in enumerate(full) if len(c) > plan.full_budget}
        return Tokenized([self.wrap(c[: plan.full_budget]) for c in full], sorted(truncated))

    def prompts(self, texts: Sequence[str], plan: QueryPlan) -> tuple[list[str], set[int]]:
        """The whole prompt strings of instruction-formatted queries (after the truncate-decode round trip),
        and the indices of the queries that were cut."""
        content = self.content_ids(texts)
        truncated = {i for i, c in enumerate(content) if len(c) > plan.query_budget}
        decoded = self.decode([c[: plan.query_budget] for c in content])
        return [plan.prefix + d + plan.suffix for d in decoded], truncated

    def _prompt_ids(self, prompts: list[str], split: PrefixSplit | None) -> list[list[int]]:
        if split is None:
            return self.content_ids(prompts)
        tails = [i for i, p in enumerate(prompts) if p.startswith(split.text)]
        joint = [i for i, p in enumerate(prompts) if not p.startswith(split.text)]  # the safe fallback
        out: list[list[int]] = [[] for _ in prompts]
        for i, ids in zip(tails, self.content_ids([prompts[i][len(split.text) :] for i in tails]), strict=True):
            out[i] = [*split.content, *ids]
        for i, ids in zip(joint, self.content_ids([prompts[i] for i in joint]), strict=True):
            out[i] = ids
        return out

    def prefix_split(self, prompts: Sequence[str], prefix_ids: Sequence[int]) -> PrefixSplit | None:
        """The :class:`PrefixSplit` for cached ``prefix_ids``, from two whole probe prompts (strings).

        None, and every query is tokenized whole, unless the cached ids end with a special token and the
        prompts' common text up to that token tokenizes to exactly the cached ids.
        """
        if not prefix_ids or prefix_ids[-1] not in set(self.tokenizer.all_special_ids):
            return None
        token = str(self.tokenizer.convert_ids_to_tokens(int(prefix_ids[-1])))
        common = os.path.commonprefix(list(prompts))  # noqa: RUF071 - a character prefix is what is wanted
        end = common.rfind(token)
        if end < 0:
            return None
        text, content = common[: end + len(token)], list(prefix_ids[len(self.head) :])
        return PrefixSplit(text, tuple(content)) if self.content_ids([text])[0] == content else None
