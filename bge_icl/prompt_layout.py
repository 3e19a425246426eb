"""The layout of an embedder's query prompt, computed once at setup: one frozen :class:`PromptLayout`.

A query is ``BOS + prefix + format(instruction, query) + suffix + EOS`` (:mod:`bge_icl.prompts` builds the strings).
Everything about it that does not depend on the query text is decided here, once, from the options and the
tokenizer: the prefix text, FlagEmbedding's token budgets (:class:`~bge_icl.tokenization.QueryPlan`), which token ids
every query starts with (the ids whose keys/values are cached), and where the prompt string splits so that only
the query's own part is tokenized per call (:class:`~bge_icl.tokenization.PrefixSplit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bge_icl.errors import OptionValueError
from bge_icl.options import EmbedderOptions, positive_int
from bge_icl.prompts import ICLExample, build_prefix, fill_instructions, format_query
from bge_icl.tokenization import PrefixSplit, PromptTokenizer, QueryPlan, Tokenized

PROBES = ("a", "1", "The", ".", "\u00e9")
"""Query texts whose prompts differ right where the query text begins (a letter, a digit, a capital, punctuation, a
non-ASCII letter): the common token start of their prompts is the cached prefix."""


def stable_prefix(probes: Sequence[Sequence[int]]) -> list[int]:
    """The ids every query starts with: the common start of the probe queries' token ids.

    It ends where the query text begins (after ``<query>`` with an instruction, after the last example's response and
    its blank line without one): a token the prefix's end would merge with query text differs between the probes, so
    it is left out. A query whose ids do not start with these runs whole (:func:`~bge_icl.prefix_cache.starts_with`).

    Example:
        >>> stable_prefix([[1, 5, 9, 7, 2], [1, 5, 9, 8, 2], [1, 5, 9, 6, 4, 2]])
        [1, 5, 9]
    """
    first = probes[0]
    n = next((i for i, t in enumerate(first) if any(len(p) <= i or p[i] != t for p in probes)), len(first))
    return list(first[:n])


def through_last_special(ids: Sequence[int], special_ids: set[int]) -> list[int]:
    """``ids`` cut after their last special token ([] without one): where a prompt string can split for tokenizing.

    Example:
        >>> through_last_special([1, 5, 9, 7], special_ids={9})
        [1, 5, 9]
    """
    last = max((i for i, t in enumerate(ids) if t in special_ids), default=-1)
    return list(ids[: last + 1])


def query_plan(tokenizer: PromptTokenizer, prefix: str, suffix: str, max_length: int, name: str) -> QueryPlan:
    """FlagEmbedding's token budgets for a query limit of ``max_length`` (the option or argument ``name``).

    Raises:
        OptionValueError: ``max_length`` is not a positive int, or leaves no room for the query.
    """
    plan = tokenizer.query_plan(prefix, suffix, positive_int(name, max_length))
    if plan.query_budget <= 0:
        msg = (
            f"{name}={max_length} leaves no room for the query: BOS, the suffix "
            f"{suffix!r} and EOS take {max_length - plan.query_budget} tokens"
        )
        raise OptionValueError(msg, option=name, value=max_length, rule="room")
    return plan


@dataclass(frozen=True)
class PromptLayout:
    """Everything about an embedder's query prompt that does not depend on the query text.

    Attributes:
        examples: The few-shot examples, each with its ``instruct`` filled in.
        prefix: The few-shot prefix text ('' when zero-shot).
        instruction: The task instruction (None: the query as is).
        template: The query template with two ``{}`` (instruction, query).
        suffix: Appended after each query.
        max_length: ``query_max_length``.
        plan: The token budgets for ``max_length``.
        cached_ids: The token ids every query starts with whose keys/values are cached (BOS up to where the query
            text begins: ``<query>``, or the blank line after the last example); None when queries run whole
            (``prefix_cache=False``, no prefix beyond BOS, or past the attention window).
        split: Where prompt strings split into a known start (its ids the cached ids' start, through their last
            special token) and the rest (tokenized per call); None: every prompt is tokenized whole.

    The layout holds no state: the prefix KV of :attr:`cached_ids` live in the embedder's runner
    (:class:`~bge_icl.runner.Runner`).
    """

    examples: tuple[ICLExample, ...]
    prefix: str
    instruction: str | None
    template: str
    suffix: str
    max_length: int
    plan: QueryPlan
    cached_ids: tuple[int, ...] | None
    split: PrefixSplit | None

    @classmethod
    def build(cls, options: EmbedderOptions, tokenizer: PromptTokenizer, window: int | None) -> PromptLayout:
        """The layout for ``options`` with this tokenizer and the model's attention ``window`` (None: unlimited).

        Raises:
            OptionValueError: ``query_max_length`` leaves no room for the query.
        """
        o = options
        examples = fill_instructions(o.examples_for_task or (), o.query_instruction_for_retrieval)  # checked options
        prefix = build_prefix(examples, o.examples_instruction_format)
        plan = query_plan(tokenizer, prefix, o.suffix, o.query_max_length, "query_max_length")
        probes = [format_query(q, o.query_instruction_for_retrieval, o.query_instruction_format) for q in PROBES]
        cached: tuple[int, ...] | None = None
        split = None
        if o.prefix_cache:
            ids = stable_prefix(tokenizer.queries(probes, plan).ids)
            if len(ids) > len(tokenizer.head) and (window is None or len(ids) < window):
                cached = tuple(ids)
                special = set(tokenizer.tokenizer.all_special_ids) - set(tokenizer.head)
                split = tokenizer.prefix_split(tokenizer.prompts(probes, plan)[0], through_last_special(ids, special))
        return cls(examples, prefix, o.query_instruction_for_retrieval, o.query_instruction_format, o.suffix,
                   o.query_max_length, plan, cached, split)  # fmt: skip

    def plan_for(self, tokenizer: PromptTokenizer, max_length: int | None) -> QueryPlan:
        """The plan for a call's ``max_length`` (None or the option's value: :attr:`plan`)."""
        if max_length is None or max_length == self.max_length:
            return self.plan
        return query_plan(tokenizer, self.prefix, self.suffix, max_length, "max_length")

    def tokenize(self, tokenizer: PromptTokenizer, queries: Sequence[str], plan: QueryPlan) -> Tokenized:
        """The token ids of ``queries`` in this layout (FlagEmbedding's, see :meth:`PromptTokenizer.queries`)."""
        formatted = [format_query(q, self.instruction, self.template) for q in queries]
        return tokenizer.queries(formatted, plan, self.split)
