"""One forward pass over a batch of token-id lists: pad, run the base model, pool, normalize."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from bge_icl.pooling import l2_normalize, last_token_pool


def pad_left(batch: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token ids into a (B, T) id tensor and a (B, T) attention mask."""
    T = max(len(x) for x in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(batch), T), dtype=torch.long)  # (B, T)
    for row, seq in enumerate(batch):
        ids[row, T - len(seq) :] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, T - len(seq) :] = 1
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def embed_batch(model: Any, batch: Sequence[Sequence[int]], pad_id: int, normalize: bool) -> torch.Tensor:
    """Embeddings of one batch, shape (B, H) float32, on the model's device.

    Positions count real tokens only (``cumsum(mask) - 1``), so a sequence gets the same positions
    whatever padding it shares a batch with.
    """
    device = next(model.parameters()).device
    input_ids, mask = pad_left(batch, pad_id, device)  # (B, T), (B, T)
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
    pooled = last_token_pool(out.last_hidden_state, mask)  # (B, H)
    return l2_normalize(pooled) if normalize else pooled.float()
