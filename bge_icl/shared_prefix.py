"""Shared-prefix ("cascade") attention: query batches attend to one copy of the cached prefix.

The copy path (:func:`bge_icl.prefix_cache.forward_with_prefix`) expands the prefix's keys and values to B
rows, wraps them in a ``DynamicCache`` that concatenates the queries' own, and lets transformers repeat the
KV heads for the explicit mask: per layer, B x P keys and values are copied twice. Here the decoder layers
run one by one on the query tokens only, and each layer's attention is split in two exact parts (as in
Hydragen and FlashInfer's cascade attention):

- every query token attends to *all* P prefix tokens (no mask), against the prefix's single
  (kv_heads, P, head_dim) keys and values; query heads are grouped under their KV head (GQA without
  repeating KV heads), and the batch is folded into the matmul's rows, so nothing is expanded per row;
- it attends to its own tail causally (padding masked);
- the two softmax parts are merged exactly with a shared running maximum (log-sum-exp), in float32.

On the CPU both parts run in torch's fused flash kernel, which returns each part's log-sum-exp
(:func:`cascade_attention_fused`): no (rows, P) score matrix is held, and the merge weighs the two outputs by
their log-sum-exps. Elsewhere (GPUs, until measured there) the explicit kernel (:func:`cascade_attention`)
holds the scores in float32, in row chunks of at most :data:`SCORE_CHUNK` scores.

The layers' own modules (norms, projections, rotary embedding, MLP) do the rest, so the weights and the
math are the model's; only the attention kernel is replaced. Works on transformers 4.46 to 5.x for the
Llama/Mistral decoder layout; other models use the copy path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from transformers.models.mistral.modeling_mistral import apply_rotary_pos_emb

from bge_icl.prefix_cache import PrefixCache

_LAYER_PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
SCORE_CHUNK = {"cpu": 2**22, "cuda": 2**27}
"""Most float32 attention scores held at once (16 MiB on CPU, 512 MiB on GPU): rows are attended in chunks, so
the transient memory of a batch does not grow with rows x prefix length."""
_ATTENTION_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim")


def supports_shared_prefix(model: Any) -> bool:
    """Whether ``model`` has the Llama/Mistral decoder layout this module runs (else: the copy path)."""
    layers = getattr(model, "layers", None)
    if not layers or not all(hasattr(model, a) for a in ("embed_tokens", "norm")) or _rotary(model) is None:
        return False
    layer = layers[0]
    return all(hasattr(layer, a) for a in _LAYER_PARTS) and all(hasattr(layer.self_attn, a) for a in _ATTENTION_PARTS)


def shared_prefix_cost(config: Any) -> Callable[[int, int], int]:
    """The cost of one cached-query row, in tokens, for :class:`~bge_icl.batching.BatchQueue`.

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

    def cost(longest: int, skip: int) -> int:
        return longest + -(-longest * heads * skip // width)  # T + ceil(T * heads * P / width)

    return cost


def _rotary(model: Any) -> Any:
    # transformers >= 4.48 keeps one rotary embedding on the model; 4.46 keeps one per attention module.
    rotary = getattr(model, "rotary_emb", None)
    return rotary if rotary is not None else getattr(getattr(model.layers[0], "self_attn", None), "rotary_emb", None)


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


_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def fused_kernel_for(device: torch.device) -> bool:
    """Whether :func:`cascade_attention_fused` runs on ``device``: on the CPU, where torch's flash kernel returns the
    log-sum-exp (``BGE_ICL_CASCADE_KERNEL=explicit`` keeps :func:`cascade_attention`). GPUs keep the explicit
    kernel until its fused counterpart has been measured there."""
    return device.type == "cpu" and _FLASH_CPU is not None and os.environ.get("BGE_ICL_CASCADE_KERNEL") != "explicit"


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
    assert _FLASH_CPU is not None
    B, Hq, T, d = q.shape
    Hkv = prefix_k.shape[0]
    G = Hq // Hkv
    # Prefix part: (B, G, T) folded into the rows under each KV head, one "batch" of Hkv heads; nothing expanded.
    rows = q.view(B, Hkv, G, T, d).permute(1, 0, 2, 3, 4).reshape(1, Hkv, B * G * T, d)  # (1, Hkv, BGT, d)
    o_prefix, lse_prefix = _FLASH_CPU(rows, prefix_k[None], prefix_v[None], 0.0, False, attn_mask=None, scale=scale)[:2]
    o_prefix = o_prefix.view(Hkv, B, G, T, d).permute(1, 0, 2, 3, 4).reshape(B, Hq, T, d).float()  # (B, Hq, T, d)
    lse_prefix = lse_prefix.view(Hkv, B, G, T).permute(1, 0, 2, 3).reshape(B, Hq, T).float()  # (B, Hq, T)
    # Tail part: causal over the row's own T tokens (small: repeating its KV heads costs little).
    k_tail, v_tail = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)  # (B, Hq, T, d)
    o_tail, lse_tail = _FLASH_CPU(q, k_tail, v_tail, 0.0, True, attn_mask=None, scale=scale)[:2]
    m = torch.maximum(lse_prefix, lse_tail.float())  # (B, Hq, T)
    w_prefix, w_tail = torch.exp(lse_prefix - m), torch.exp(lse_tail.float() - m)  # (B, Hq, T) each
    out = (o_prefix * w_prefix[..., None] + o_tail.float() * w_tail[..., None]) / (w_prefix + w_tail)[..., None]
    return out.to(q.dtype)  # (B, Hq, T, d)


@torch.inference_mode()
def forward_shared_prefix(
    model: Any, prefix: PrefixCache, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Last hidden states of query tokens that continue ``prefix``, without copying the prefix per row.

    Args:
        model: The base model (Llama/Mistral layout, see :func:`supports_shared_prefix`).
        prefix: The cached prefix (P tokens).
        input_ids: The tokens after the prefix, right-padded, shape (B, T).
        attention_mask: 1 for real tokens, shape (B, T).

    Returns:
        Hidden states of shape (B, T, H), after the final norm (as ``last_hidden_state``).
    """
    B, T = input_ids.shape
    P = prefix.length
    config = model.config
    Hq, Hkv = int(config.num_attention_heads), int(config.num_key_value_heads)
    x = model.embed_tokens(input_ids)  # (B, T, H)
    position_ids = (P + torch.arange(T, device=input_ids.device)).expand(B, T)  # (B, T)
    cos, sin = _rotary(model)(x, position_ids)  # each (B, T, d)
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # (T, T)
    allowed = causal[None] & attention_mask.bool()[:, None, :]  # (B, T, T)
    fused = fused_kernel_for(x.device)
    step = max(1, SCORE_CHUNK.get(x.device.type, 2**27) // (Hq * T * (P + T)))  # explicit kernel: rows per chunk
    for layer, (prefix_k, prefix_v) in zip(model.layers, prefix.layers, strict=True):
        attn = layer.self_attn
        d = int(attn.head_dim)
        h = layer.input_layernorm(x)  # (B, T, H)
        q = attn.q_proj(h).view(B, T, Hq, d).transpose(1, 2)  # (B, Hq, T, d)
        k = attn.k_proj(h).view(B, T, Hkv, d).transpose(1, 2)  # (B, Hkv, T, d)
        v = attn.v_proj(h).view(B, T, Hkv, d).transpose(1, 2)  # (B, Hkv, T, d)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if fused:
            out = cascade_attention_fused(q, k, v, prefix_k[0], prefix_v[0], d**-0.5)  # (B, Hq, T, d)
        else:
            out = torch.cat([
                cascade_attention(q[i : i + step], k[i : i + step], v[i : i + step], prefix_k[0], prefix_v[0],
                                  allowed[i : i + step], d**-0.5)
                for i in range(0, B, step)
            ])  # (B, Hq, T, d)  # fmt: skip
        x = x + attn.o_proj(out.transpose(1, 2).reshape(B, T, Hq * d))  # (B, T, H)
        x = x + layer.mlp(layer.post_attention_layernorm(x))  # (B, T, H)
    return model.norm(x)  # (B, T, H)
