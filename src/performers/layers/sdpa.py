"""Exact softmax attention of the layers: ``F.scaled_dot_product_attention`` with key padding,
causality after a cache, additive biases, and zero (not NaN) rows for queries that see no key."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from performers.ops.masks import resolve_is_causal

__all__ = ["sdpa_attention"]


def sdpa_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    is_causal: bool = False,
    key_padding_mask: Tensor | None = None,
    attn_bias: Tensor | None = None,
    past_length: int = 0,
    dropout_p: float = 0.0,
    scale: float | None = None,
    causal: bool | None = None,
) -> Tensor:
    """Exact softmax attention through ``F.scaled_dot_product_attention``.

    Args:
        q: ``(B, H, Lq, D)``; k: ``(B, H, Lk, D)``; v: ``(B, H, Lk, Dv)``.
        is_causal: query ``i`` (absolute position ``past_length + i``) sees keys ``j ≤ past_length + i``.
        key_padding_mask: ``(B, Lk)`` bool, True = padded key.
        attn_bias: additive float mask broadcastable to ``(B, H, Lq, Lk)`` (``-inf`` = blocked).
        past_length: number of cached keys that precede the queries (incremental decoding).
        dropout_p: dropout on the attention weights.
        scale: default ``1/√D``.
        causal: deprecated spelling of ``is_causal`` (a DeprecationWarning).

    Returns:
        ``(B, H, Lq, Dv)``; rows with no visible key are 0.
    """
    causal = resolve_is_causal(is_causal, causal, deprecated_in="sdpa_attention")
    lq, lk = q.shape[-2], k.shape[-2]
    if causal and lq == 1 and past_length == lk - 1:
        causal = False  # the newest query sees every key anyway
    if key_padding_mask is None and attn_bias is None and (not causal or (past_length == 0 and lq == lk)):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale)

    bias = q.new_zeros(1, 1, lq, lk)
    if causal:
        visible = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(diagonal=past_length)
        bias = bias.masked_fill(~visible, float("-inf"))
    if key_padding_mask is not None:
        bias = bias.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    if attn_bias is not None:
        bias = bias + attn_bias.to(q.dtype)
    # A row with every key blocked would be NaN (softmax over -inf), and NaN would leak into the
    # values of later layers and into the gradients through 0·NaN. Unblock such rows, zero them after.
    dead = torch.isneginf(bias).all(dim=-1, keepdim=True)
    bias = bias.masked_fill(dead, 0.0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)
    return out.masked_fill(dead, 0.0)
