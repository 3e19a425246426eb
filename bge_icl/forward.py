"""Every forward pass bge-icl runs, and the one factory that picks the query path once, at setup.

Three paths embed a batch of token-id lists:

- **whole prompt** (:func:`forward_whole`): each row is a whole sequence, left-padded; positions count real tokens
  only (``cumsum(mask) - 1``), so a sequence gets the same positions whatever it is batched with. Passages, and
  queries that do not continue the cached prefix, run this way.
- **copied prefix** (:func:`forward_copied_prefix`): rows hold only the tokens after the cached few-shot prefix,
  right-padded; the prefix's keys and values are expanded to every row in a ``DynamicCache``.
- **shared prefix** (:func:`forward_shared_prefix`): the same rows; the decoder layers run one by one and each
  layer's attention is cascade attention (:mod:`bge_icl.cascade_attention`) against one shared copy of the prefix.
  Everything but the attention runs on the real tokens packed together, so no matmul computes padding.
  The layers' own modules (norms, projections, rotary embedding, MLP) do the rest, so the weights and the math
  are the model's; only the attention kernel is replaced. Llama/Mistral decoder layout only.

:class:`~bge_icl.choices.PrefixAttention` names the choices (the ``prefix_attention`` option, checked there);
:meth:`ForwardPath.from_option` resolves one to the functions that run, once per embedder (as vLLM's
``PoolingMethod.from_pooling_type``).
:func:`build_prefix_kv` runs the prefix itself once.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bge_icl.batching import RowCost, copied_prefix_cost, fused_prefix_cost, shared_prefix_cost
from bge_icl.cascade_attention import SCORE_CHUNK, cascade_attention_chunked, cascade_attention_fused, has_fused_kernel
from bge_icl.choices import PrefixAttention
from bge_icl.decoder import DecoderModel, LlamaLayout
from bge_icl.errors import OptionValueError
from bge_icl.pooling import last_token_pool
from bge_icl.prefix_cache import PrefixKV
from bge_icl.transformers_compat import apply_rotary_pos_emb, cache_kwarg, cache_layers, new_cache, rotary_embedding

_LAYER_PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
_ATTENTION_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim")


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


def supports_shared_prefix(model: DecoderModel) -> bool:
    """Whether ``model`` has the Llama/Mistral decoder layout :func:`forward_shared_prefix` runs."""
    layers = getattr(model, "layers", None)
    if not layers or not all(hasattr(model, a) for a in ("embed_tokens", "norm")) or rotary_embedding(model) is None:
        return False
    layer = layers[0]
    return all(hasattr(layer, a) for a in _LAYER_PARTS) and all(hasattr(layer.self_attn, a) for a in _ATTENTION_PARTS)


def forward_whole(model: DecoderModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states of whole, left-padded sequences (B, T) -> (B, T, H); positions count real tokens."""
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    return out.last_hidden_state  # (B, T, H)


def forward_copied_prefix(
    model: DecoderModel, prefix: PrefixKV, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Last hidden states of query tokens that continue ``prefix``, the prefix's keys/values copied per row.

    Args:
        model: The base model.
        prefix: The cached prefix (P tokens).
        input_ids: The tokens after the prefix, right-padded, shape (B, T).
        attention_mask: 1 for real tokens, shape (B, T).

    Returns:
        Hidden states of shape (B, T, H).
    """
    B, T = input_ids.shape
    P = prefix.length
    layers = [(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in prefix.layers]  # (B, kv, P, d)
    full_mask = torch.cat([attention_mask.new_ones(B, P), attention_mask], dim=1)  # (B, P + T)
    position_ids = (P + torch.arange(T, device=input_ids.device)).expand(B, T)  # (B, T)
    out = model(
        input_ids=input_ids,
        attention_mask=full_mask,
        position_ids=position_ids,
        use_cache=True,
        **{cache_kwarg(model): new_cache(layers)},
    )
    return out.last_hidden_state  # (B, T, H)


def forward_shared_prefix(
    model: LlamaLayout, prefix: PrefixKV, input_ids: torch.Tensor, attention_mask: torch.Tensor, fused: bool
) -> torch.Tensor:
    """Last hidden states of query tokens that continue ``prefix``, attending to one shared copy of it.

    Args:
        model: The base model (Llama/Mistral layout, see :func:`supports_shared_prefix`).
        prefix: The cached prefix (P tokens).
        input_ids: The tokens after the prefix, right-padded, shape (B, T).
        attention_mask: 1 for real tokens, shape (B, T).
        fused: Use :func:`~bge_icl.cascade_attention.cascade_attention_fused` (else the explicit kernel in row
            chunks of :data:`~bge_icl.cascade_attention.SCORE_CHUNK` scores).

    Returns:
        Hidden states of shape (B, T, H), after the final norm (as ``last_hidden_state``); zeros at the padding.
    """
    B, T = input_ids.shape
    P = prefix.length
    config = model.config
    Hq, Hkv = int(config.num_attention_heads), int(config.num_key_value_heads)
    real = attention_mask.bool()  # (B, T)
    where = real.flatten().nonzero().squeeze(1)  # (N,): the real tokens' places in the (B * T) grid
    N = int(where.numel())
    # The layers' own work (norms, projections, MLP) runs on the N real tokens packed into one row: no padding.
    x = model.embed_tokens(input_ids).flatten(0, 1)[where][None]  # (1, N, H)
    positions = (P + torch.arange(T, device=input_ids.device)).repeat(B)[where]  # (N,)
    cos, sin = rotary_embedding(model)(x, positions[None])  # each (1, N, d)
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # (T, T)
    allowed = causal[None] & real[:, None, :]  # (B, T, T)
    max_scores = SCORE_CHUNK.get(x.device.type, 2**27)

    def rows(t: torch.Tensor) -> torch.Tensor:  # packed (1, heads, N, d) -> per row (B, heads, T, d), zero padding
        grid = t.new_zeros(B * T, t.shape[1], t.shape[3])  # (B * T, heads, d)
        grid[where] = t[0].transpose(0, 1)
        return grid.view(B, T, t.shape[1], t.shape[3]).transpose(1, 2)

    for layer, (prefix_k, prefix_v) in zip(model.layers, prefix.layers, strict=True):
        attn = layer.self_attn
        d = int(attn.head_dim)
        h = layer.input_layernorm(x)  # (1, N, H)
        q = attn.q_proj(h).view(1, N, Hq, d).transpose(1, 2)  # (1, Hq, N, d)
        k = attn.k_proj(h).view(1, N, Hkv, d).transpose(1, 2)  # (1, Hkv, N, d)
        v = attn.v_proj(h).view(1, N, Hkv, d).transpose(1, 2)  # (1, Hkv, N, d)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        q, k, v = rows(q), rows(k), rows(v)  # (B, Hq | Hkv, T, d): attention runs per row
        pk, pv = prefix_k[0], prefix_v[0]  # (Hkv, P, d)
        if fused:
            out = cascade_attention_fused(q, k, v, pk, pv, d**-0.5)  # (B, Hq, T, d)
        else:
            out = cascade_attention_chunked(q, k, v, pk, pv, allowed, d**-0.5, max_scores)  # (B, Hq, T, d)
        out = out.transpose(1, 2).reshape(B * T, Hq * d)[where]  # (N, Hq * d): packed again
        x = x + attn.o_proj(out)[None]  # (1, N, H)
        x = x + layer.mlp(layer.post_attention_layernorm(x))  # (1, N, H)
    hidden = x.new_zeros(B * T, x.shape[-1])  # (B * T, H)
    hidden[where] = model.norm(x)[0]
    return hidden.view(B, T, -1)  # (B, T, H), zeros at padding


@torch.inference_mode()
def build_prefix_kv(model: DecoderModel, ids: Sequence[int]) -> PrefixKV:
    """Run ``ids`` through ``model`` once and keep the keys and values of every layer."""
    device = next(model.parameters()).device
    input_ids = torch.tensor([list(ids)], dtype=torch.long, device=device)  # (1, P)
    position_ids = torch.arange(len(ids), device=device)[None]  # (1, P)
    out = model(input_ids=input_ids, position_ids=position_ids, use_cache=True)
    cache = out.get("cache", None) or out.get("past_key_values", None)
    return PrefixKV(tuple(ids), cache_layers(cache))  # each layer: (1, kv_heads, P, head_dim) twice


PrefixForward = Callable[[Any, PrefixKV, torch.Tensor, torch.Tensor], torch.Tensor]
"""(model, prefix, tail ids (B, T), tail mask (B, T)) -> last hidden states (B, T, H)."""


@dataclass(frozen=True)
class ForwardPath:
    """The forward passes of one embedder, resolved once from its ``prefix_attention`` option.

    Attributes:
        attention: The resolved choice (never ``auto``).
        kernel: ``"fused"`` or ``"explicit"`` for the shared paths, None for ``copy``.
        prefix_forward: Runs cached-query tails against the prefix.
        row_cost: The cost of one cached-query row, in tokens, for batching (:mod:`bge_icl.batching`).
    """

    attention: PrefixAttention
    kernel: str | None
    prefix_forward: PrefixForward
    row_cost: RowCost

    @classmethod
    def from_option(cls, prefix_attention: PrefixAttention | str, model: DecoderModel) -> ForwardPath:
        """The path ``prefix_attention`` (a checked choice, :mod:`bge_icl.choices`) names, for ``model`` on its device.

        Raises:
            OptionValueError: A shared path asked of a model without the Llama/Mistral layout.
        """
        choice = PrefixAttention(prefix_attention)
        shared_ok = supports_shared_prefix(model)
        if choice is PrefixAttention.AUTO:
            choice = PrefixAttention.SHARED if shared_ok else PrefixAttention.COPY
        if choice is PrefixAttention.COPY:
            return cls(choice, None, forward_copied_prefix, copied_prefix_cost)
        if not shared_ok:
            msg = (
                f"prefix_attention={prefix_attention!r} needs the Llama/Mistral decoder layout, which "
                f"{type(model).__name__} does not have; use 'auto' or 'copy'"
            )
            raise OptionValueError(msg, option="prefix_attention", value=prefix_attention)
        device = next(model.parameters()).device
        fused = choice is PrefixAttention.SHARED and has_fused_kernel(device)
        forward = functools.partial(forward_shared_prefix, fused=fused)
        cost = (fused_prefix_cost if fused else shared_prefix_cost)(model.config)  # no score matrix when fused
        return cls(choice, "fused" if fused else "explicit", forward, cost)

    @torch.inference_mode()
    def pooled(
        self, model: DecoderModel, batch: Sequence[Sequence[int]], pad_id: int, prefix: PrefixKV | None
    ) -> torch.Tensor:
        """The last-token hidden states of one batch, shape (B, H) in the model's dtype, on its device.

        Without ``prefix`` the rows are whole sequences (:func:`forward_whole`); with it, each row's tokens after
        ``prefix.length`` run on the prefix path.
        """
        device = next(model.parameters()).device
        if prefix is None:
            input_ids, mask = pad(batch, pad_id, device, "left")  # (B, T), (B, T)
            hidden = forward_whole(model, input_ids, mask)  # (B, T, H)
        else:
            input_ids, mask = pad([seq[prefix.length :] for seq in batch], pad_id, device, "right")  # (B, T)
            hidden = self.prefix_forward(model, prefix, input_ids, mask)  # (B, T, H)
        return last_token_pool(hidden, mask)  # (B, H)
