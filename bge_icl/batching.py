"""What one row of a forward pass costs, in tokens, on each path (:mod:`bge_icl.forward`): the row-cost models.

The scheduler (:mod:`bge_icl.scheduler`) cuts passes longest row first under a row limit and a token budget of
these costs, so a cached query pays for its attention to the prefix and a copied prefix for its copy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

RowCost = Callable[[int, int], int]  # (longest row's tokens, cached prefix tokens) -> cost of one row, in tokens


def copied_prefix_cost(longest: int, prefix_tokens: int) -> int:
    """A row that holds its own copy of the prefix KV: ``longest + prefix_tokens`` (the copy path, and whole
    prompts, where ``prefix_tokens`` is 0)."""
    return longest + prefix_tokens


def shared_prefix_cost(config: Any) -> RowCost:
    """The cost of one cached-query row on the shared-prefix path, in tokens.

    A row runs ``T`` tokens through the layers (their activations are the cost of a token) and holds
    ``heads x T x P`` attention scores for the prefix; these are counted in tokens of the MLP's width, so a
    batch of short queries can hold hundreds of rows while the prefix is never copied.

    Example:
        >>> from types import SimpleNamespace
        >>> shared_prefix_cost(SimpleNamespace(num_attention_heads=32, intermediate_size=14336))(30, 500)
        64
    """
    width = getattr(config, "intermediate_size", None) or 4 * config.hidden_size
    heads, width = int(config.num_attention_heads), int(width)

    def cost(longest: int, prefix_tokens: int) -> int:
        return longest + -(-longest * heads * prefix_tokens // width)  # T + ceil(T * heads * P / width)

    return cost
