"""Cascade attention kernels: rows of query tokens attend to one shared prefix plus their own tail, exactly.

Pure tensor code (it imports torch only, no model code): :mod:`bge_icl.forward` runs the decoder layers and calls
these for the attention. The attention is split in two exact parts (as in Hydragen and FlashInfer's cascade
attention):

- every query token attends to *all* P prefix tokens (no mask), against the prefix's single
  (kv_heads, P, head_dim) keys and values; query heads are grouped under their KV head (GQA without repeating KV
  heads), and the batch is folded into the matmul's rows, so nothing is expanded per row;
- it attends to its own tail causally (padding masked);
- the two softmax parts are merged exactly with a shared maximum (log-sum-exp), in float32.

Two kernels compute it: :func:`cascade_attention_fused` runs both parts in torch's fused CPU flash kernel, which
returns each part's log-sum-exp (no (rows, P) score matrix is held); :func:`cascade_attention` holds the scores in
float32, and :func:`cascade_attention_chunked` runs it in row chunks of at most a given number of scores.
"""

from __future__ import annotations

from typing import Any

import torch

FLASH_CPU: Any = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
"""torch's fused CPU flash-attention kernel (returns the log-sum-exp), or None where this torch lacks it."""
SCORE_CHUNK = {"cpu": 2**22, "cuda": 2**27}
"""Most float32 attention scores the explicit kernel holds at once (16 MiB on CPU, 512 MiB on GPU): rows are
attended in chunks, so the transient memory of a batch does not grow with rows x prefix length."""


def has_fused_kernel(device: torch.device) -> bool:
    """Whether :func:`cascade_attention_fused` runs on ``device``: on the CPU, where torch's flash kernel returns the
    log-sum-exp. GPUs keep the explicit kernel until its fused counterpart has been measured there."""
    return device.type == "cpu" and FLASH_CPU is not None


def cascade_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor,
    allowed: torch.Tensor, scale: float,
) -> torch.Tensor:  # fmt: skip
    """Attention of tail queries over (the whole shared prefix) + (their own tail, causally).

    Args:
        q: Query states, shape (B, Hq, T, d), rotary applied.
        k: The tail's key states, shape (B, Hkv, T, d), rotary applied.
        v: The tail's value states, shape (B, Hkv, T, d).
        prefix_k: The prefix's key states, shape (Hkv, P, d), shared by every row.
        prefix_v: The prefix's value states, shape (Hkv, P, d).
        allowed: Which tail key each tail query may see, shape (B, T, T) bool (causal and not padding).
        scale: Softmax scale (``head_dim ** -0.5``).

    Returns:
        The attention output, shape (B, Hq, T, d), in ``q``'s dtype.
    """
    B, Hq, T, d = q.shape
    Hkv = prefix_k.shape[0]  # prefix_k: (Hkv, P, d)
    G = Hq // Hkv  # query heads per KV head: head h reads KV head h // G
    qg = q.view(B, Hkv, G, T, d)  # (B, Hkv, G, T, d)
    # Prefix part: fold B, G, T into the rows of one matmul per KV head; the prefix is never expanded.
    q_rows = qg.permute(1, 0, 2, 3, 4).reshape(Hkv, B * G * T, d)  # (Hkv, BGT, d)
    s_prefix = torch.bmm(q_rows, prefix_k.transpose(1, 2)).float() * scale  # (Hkv, BGT, P)
    # Tail part: causal over the row's own tokens.
    s_tail = torch.matmul(qg, k.unsqueeze(2).transpose(-1, -2)).float() * scale  # (B, Hkv, G, T, T)
    s_tail = s_tail.masked_fill(~allowed[:, None, None], float("-inf"))
    # Exact merge: one maximum over both parts, then the two exp-sums.
    m_prefix = s_prefix.amax(dim=-1).view(Hkv, B, G, T).permute(1, 0, 2, 3)  # (B, Hkv, G, T)
    m = torch.maximum(m_prefix, s_tail.amax(dim=-1))  # (B, Hkv, G, T)
    e_prefix = torch.exp(s_prefix - m.permute(1, 0, 2, 3).reshape(Hkv, B * G * T, 1))  # (Hkv, BGT, P)
    e_tail = torch.exp(s_tail - m[..., None])  # (B, Hkv, G, T, T)
    denom = e_prefix.sum(dim=-1).view(Hkv, B, G, T).permute(1, 0, 2, 3) + e_tail.sum(dim=-1)  # (B, Hkv, G, T)
    o_prefix = torch.bmm(e_prefix.to(prefix_v.dtype), prefix_v)  # (Hkv, BGT, d)
    o_prefix = o_prefix.view(Hkv, B, G, T, d).permute(1, 0, 2, 3, 4).float()  # (B, Hkv, G, T, d)
    o_tail = torch.matmul(e_tail.to(v.dtype), v.unsqueeze(2)).float()  # (B, Hkv, G, T, d)
    out = (o_prefix + o_tail) / denom[..., None]  # (B, Hkv, G, T, d)
    return out.to(q.dtype).reshape(B, Hq, T, d)


def cascade_attention_chunked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor,
    allowed: torch.Tensor, scale: float, max_scores: int,
) -> torch.Tensor:  # fmt: skip
    """:func:`cascade_attention` over rows in chunks, each holding at most ``max_scores`` float32 scores.

    Args: as :func:`cascade_attention`, plus ``max_scores``, e.g. ``SCORE_CHUNK[device.type]``.

    Returns:
        The attention output, shape (B, Hq, T, d).
    """
    B, Hq, T, _ = q.shape
    P = prefix_k.shape[1]  # prefix_k: (Hkv, P, d)
    step = max(1, max_scores // (Hq * T * (P + T)))  # rows per chunk
    return torch.cat([
        cascade_attention(q[i : i + step], k[i : i + step], v[i : i + step], prefix_k, prefix_v,
                          allowed[i : i + step], scale)
        for i in range(0, B, step)
    ])  # (B, Hq, T, d)  # fmt: skip


def cascade_attention_fused(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor, scale: float
) -> torch.Tensor:
    """:func:`cascade_attention` with torch's fused CPU flash kernel for both parts, merged by their log-sum-exps.

    No (rows, P) score matrix is ever held: the kernel works in blocks. The tails must be right-padded: the causal
    mask then keeps every real token off the padding after it (the padding rows' outputs are not used).

    Args:
        q: Query states, shape (B, Hq, T, d), rotary applied.
        k: The tail's key states, shape (B, Hkv, T, d).
        v: The tail's value states, shape (B, Hkv, T, d).
        prefix_k: The prefix's key states, shape (Hkv, P, d), shared by every row.
        prefix_v: The prefix's value states, shape (Hkv, P, d).
        scale: Softmax scale.

    Returns:
        The attention output, shape (B, Hq, T, d), in ``q``'s dtype.
    """
    assert FLASH_CPU is not None, "has_fused_kernel() is False: this torch has no fused CPU flash kernel"
    B, Hq, T, d = q.shape
    Hkv = prefix_k.shape[0]
    G = Hq // Hkv
    # Prefix part: (B, G, T) folded into the rows under each KV head, one "batch" of Hkv heads; nothing expanded.
    rows = q.view(B, Hkv, G, T, d).permute(1, 0, 2, 3, 4).reshape(1, Hkv, B * G * T, d)  # (1, Hkv, BGT, d)
    o_prefix, lse_prefix = FLASH_CPU(rows, prefix_k[None], prefix_v[None], 0.0, False, attn_mask=None, scale=scale)[:2]
    o_prefix = o_prefix.view(Hkv, B, G, T, d).permute(1, 0, 2, 3, 4).reshape(B, Hq, T, d).float()  # (B, Hq, T, d)
    lse_prefix = lse_prefix.view(Hkv, B, G, T).permute(1, 0, 2, 3).reshape(B, Hq, T).float()  # (B, Hq, T)
    # Tail part: causal over the row's own T tokens (small: repeating its KV heads costs little).
    k_tail, v_tail = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)  # (B, Hq, T, d)
    o_tail, lse_tail = FLASH_CPU(q, k_tail, v_tail, 0.0, True, attn_mask=None, scale=scale)[:2]
    m = torch.maximum(lse_prefix, lse_tail.float())  # (B, Hq, T)
    w_prefix, w_tail = torch.exp(lse_prefix - m), torch.exp(lse_tail.float() - m)  # (B, Hq, T) each
    out = (o_prefix * w_prefix[..., None] + o_tail.float() * w_tail[..., None]) / (w_prefix + w_tail)[..., None]
    return out.to(q.dtype)  # (B, Hq, T, d)
