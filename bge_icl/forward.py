"""One forward pass over a batch of token-id lists: pad, run the base model, pool, normalize."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch

from bge_icl.pooling import l2_normalize, last_token_pool
from bge_icl.prefix_cache import PrefixCache, forward_with_prefix
from bge_icl.shared_prefix import forward_shared_prefix


def pad(
    batch: Sequence[Sequence[int]], pad_id: int, device: torch.device, side: str = "left"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token ids into a (B, T) id tensor and a (B, T) attention mask, on ``side`` (no per-row Python loop).

    Example:
        >>> pad([[5, 6, 7], [8]], 0, torch.device("cpu"))
        (tensor([[5, 6, 7],
                [0, 0, 8]]), tensor([[1, 1, 1],
                [0, 0, 1]]))
    """
    lengths = torch.tensor([len(x) for x in batch])  # (B,)
    T = int(lengths.max())
    cols = torch.arange(T)[None]  # (1, T)
    real = cols >= (T - lengths)[:, None] if side == "left" else cols < lengths[:, None]  # (B, T) bool
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)  # (B, T)
    ids[real] = torch.tensor(list(itertools.chain.from_iterable(batch)), dtype=torch.long)  # row-major = input order
    return ids.to(device), real.long().to(device)


@torch.inference_mode()
def embed_batch(
    model: Any,
    batch: Sequence[Sequence[int]],
    pad_id: int,
    normalize: bool,
    prefix: PrefixCache | None = None,
    truncate_dim: int | None = None,
    shared: bool = True,
) -> torch.Tensor:
    """Embeddings of one batch, shape (B, D) float32 (D = H, or ``truncate_dim``), on the model's device.

    Without ``prefix``, each row is a whole sequence, left-padded; positions count real tokens only
    (``cumsum(mask) - 1``), so a sequence gets the same positions whatever it is batched with. With
    ``prefix``, each row holds only the tokens after the cached prefix, right-padded after it, and attends to
    the one shared copy of the prefix (``shared``, :mod:`bge_icl.shared_prefix`) or to a per-row copy.
    """
    device = next(model.parameters()).device
    if prefix is None:
        input_ids, mask = pad(batch, pad_id, device, "left")  # (B, T), (B, T)
        position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
        hidden = out.last_hidden_state  # (B, T, H)
    else:
        tails = [seq[prefix.length :] for seq in batch]
        input_ids, mask = pad(tails, pad_id, device, "right")  # (B, T), (B, T)
        forward = forward_shared_prefix if shared else forward_with_prefix
        hidden = forward(model, prefix, input_ids, mask)  # (B, T, H)
    pooled = last_token_pool(hidden, mask)[:, :truncate_dim]  # (B, D): truncated before normalizing
    return l2_normalize(pooled) if normalize else pooled.float()
