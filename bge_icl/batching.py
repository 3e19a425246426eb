"""What one row of a forward pass costs, in tokens, on each path (:mod:`bge_icl.forward`): the row-cost models.

The scheduler (:mod:`bge_icl.scheduler`) cuts passes longest row first under a row limit and a token budget of
these costs, so a cached query pays for its attention to the prefix and a copied prefix for its copy. What that
attention costs depends on the kernel: the explicit one holds a score matrix per row (memory, counted by
:func:`shared_prefix_cost`); the fused flash kernel holds none, so only its arithmetic counts
(:func:`fused_prefix_cost`), and a pass of cached queries is as many tokens of work as a pass of passages.
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


def fused_prefix_cost(config: Any) -> RowCost:
    """The cost of one cached-query row on the shared-prefix path with the fused flash kernel, in tokens.

    The kernel works in blocks and holds no score matrix, so what a row adds for its prefix is arithmetic: its
    ``T`` tokens attend to ``P`` prefix tokens (``2 x heads x head_dim`` multiply-adds per token and prefix token,
    for the scores and the weighted sum), counted in tokens of the layer's projections (q, k, v, o and the MLP's
    gate, up and down). A pass of cached queries then takes about as long as a pass of passages of the same
    budget; the prefix's share is small (bge-en-icl: ``P / 26,624`` of a token per token).

    Example:
        >>> from types import SimpleNamespace
        >>> config = SimpleNamespace(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8,
        ...                          intermediate_size=14336)
        >>> fused_prefix_cost(config)(30, 1142)  # 30 + ceil(30 * 1142 / 26,624)
        32
    """
    hidden, heads = int(config.hidden_size), int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    mlp = int(getattr(config, "intermediate_size", None) or 4 * hidden)
    projections = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + 3 * hidden * mlp  # per token
    per_prefix_token = 2 * heads * head_dim  # q.k and p.v, per query token and prefix token

    def cost(longest: int, prefix_tokens: int) -> int:
        return longest + -(-longest * prefix_tokens * per_prefix_token // projections)

    return cost
