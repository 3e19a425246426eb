"""Pooling (which token's hidden state is the embedding) and the head (cut, normalize), kept separate."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of each sequence's last real token; right for left and right padding alike.

    Args:
        hidden: Last hidden states, shape (B, T, H).
        attention_mask: 1 for real tokens, 0 for padding, shape (B, T).

    Returns:
        Shape (B, H), in ``hidden``'s dtype.

    Example:
        >>> h = torch.arange(12.0).reshape(2, 3, 2)  # (B=2, T=3, H=2)
        >>> last_token_pool(h, torch.tensor([[0, 1, 1], [1, 1, 0]]))
        tensor([[4., 5.],
                [8., 9.]])
    """
    B, T, _ = hidden.shape
    # Position of the last 1 in each row: flip, find the first 1, map back.
    last = T - 1 - attention_mask.flip(1).to(torch.int64).argmax(dim=1)  # (B,)
    return hidden[torch.arange(B, device=hidden.device), last]  # (B, H)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalize rows in float32 (as vLLM's ``PoolerNormalize``); shape (B, H) -> (B, H) float32."""
    return F.normalize(x.float(), p=2.0, dim=-1)


def embedding_head(pooled: torch.Tensor, truncate_dim: int | None, normalize: bool) -> torch.Tensor:
    """The embedding from pooled states: the first ``truncate_dim`` dimensions (cut before normalizing, as
    FlagEmbedding), L2-normalized in float32 when ``normalize``; (B, H) -> (B, D) float32."""
    cut = pooled[:, :truncate_dim]  # (B, D)
    return l2_normalize(cut) if normalize else cut.float()
