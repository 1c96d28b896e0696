"""Local (sliding-window) softmax attention: the efficient-attention baseline of the benchmarks.

Query ``i`` sees the keys ``j`` with ``i − window < j ≤ i`` (causal) or ``|i − j| < window``
(bidirectional), and any key padding is masked as usual. :func:`local_attention` computes it in
blocks of ``window`` positions — each query block against its own key block and its neighbours
(the previous one, and the next one when bidirectional) — so time and memory are
``O(L · window)``, not ``O(L²)``. :func:`local_attention_reference` is the naive version beside
it (the full ``L × L`` band mask through SDPA), which the tests compare it with; decoding with a
key/value cache also uses the band mask (:func:`band_bias`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from performers.layers.sdpa import sdpa_attention
from performers.ops.masks import resolve_is_causal
from performers.utils.validation import is_int

__all__ = ["band_bias", "local_attention", "local_attention_reference"]


def _check_window(window: int) -> None:
    if not is_int(window) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")


def band_bias(
    lq: int, lk: int, window: int, *, causal: bool, past_length: int = 0, device=None, dtype=torch.float32
) -> Tensor:
    """``(Lq, Lk)`` additive mask: 0 where query ``past_length + i`` sees key ``j``, ``-inf`` elsewhere."""
    _check_window(window)
    query = torch.arange(lq, device=device)[:, None] + past_length
    key = torch.arange(lk, device=device)[None, :]
    distance = query - key
    visible = (distance < window) & ((distance >= 0) if causal else (distance > -window))
    return torch.zeros(lq, lk, device=device, dtype=dtype).masked_fill(~visible, float("-inf"))


def local_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    window: int,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> Tensor:
    """The naive ``O(L²)`` local attention: SDPA with the full band mask (see :func:`local_attention`)."""
    bias = band_bias(q.shape[-2], k.shape[-2], window, causal=causal, device=q.device, dtype=q.dtype)
    return sdpa_attention(
        q, k, v, key_padding_mask=key_padding_mask, attn_bias=bias, dropout_p=dropout_p, scale=scale
    )


def local_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    window: int,
    is_causal: bool = False,
    key_padding_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    causal: bool | None = None,
) -> Tensor:
    """Sliding-window softmax attention in ``O(L · window)`` time and memory.

    Args:
        q: ``(B, H, L, D)``; k: ``(B, H, L, D)``; v: ``(B, H, L, Dv)`` (self-attention: one length).
        window: query ``i`` sees keys ``i − window < j ≤ i`` (``is_causal``) or ``|i − j| < window``.
        is_causal: see ``window``; ``causal`` is its deprecated spelling (a DeprecationWarning).
        key_padding_mask: ``(B, L)`` bool, True = padded key.
        dropout_p: dropout on the attention weights (as SDPA's).
        scale: default ``1/√D``.

    Returns:
        ``(B, H, L, Dv)``; a query that sees no key gets 0 (as :func:`sdpa_attention`).
    """
    causal = resolve_is_causal(is_causal, causal, deprecated_in="local_attention")
    _check_window(window)
    if q.shape[-2] != k.shape[-2]:
        raise ValueError(
            f"local_attention is self-attention: q and k need one length, got {q.shape[-2]} and {k.shape[-2]}"
        )
    b, _h, length, _ = q.shape
    if length <= 2 * window:  # one or two blocks: the band mask is no larger than the blocks
        return local_attention_reference(
            q,
            k,
            v,
            window=window,
            causal=causal,
            key_padding_mask=key_padding_mask,
            dropout_p=dropout_p,
            scale=scale,
        )
    n = -(-length // window)
    pad = n * window - length
    # Keys of block i: blocks i-1, i (and i+1 bidirectionally), with one empty block at each end.
    before = window
    after = pad + (0 if causal else window)

    def blocks(x: Tensor) -> Tensor:  # (B, H, L, D) → (B·n, H, span·window, D)
        x = F.pad(x, (0, 0, before, after))
        spans = [x[:, :, s * window : (s + n) * window] for s in range(2 if causal else 3)]
        x = torch.cat([s.unflatten(2, (n, window)) for s in spans], dim=3)
        return x.transpose(1, 2).flatten(0, 1)

    valid = torch.ones(b, length, dtype=torch.bool, device=q.device)
    if key_padding_mask is not None:
        valid = ~key_padding_mask
    valid = F.pad(valid, (before, after), value=False)
    spans = [valid[:, s * window : (s + n) * window] for s in range(2 if causal else 3)]
    key_valid = torch.cat([s.unflatten(1, (n, window)) for s in spans], dim=2)  # (B, n, span·W)
    # Query r of block i is at i·W + r; key c of its span at (i−1)·W + c: distance W + r − c.
    r = torch.arange(window, device=q.device)[:, None]
    c = torch.arange(key_valid.shape[-1], device=q.device)[None, :]
    distance = window + r - c
    band = (distance < window) & ((distance >= 0) if causal else (distance > -window))
    visible = (band & key_valid[:, :, None, :]).flatten(0, 1)[:, None]  # (B·n, 1, W, span·W)
    # A query that sees no key would be NaN: let it see all, then zero it (as sdpa_attention).
    dead = ~visible.any(dim=-1, keepdim=True)
    qb = F.pad(q, (0, 0, 0, pad)).unflatten(2, (n, window)).transpose(1, 2).flatten(0, 1)
    out = F.scaled_dot_product_attention(
        qb, blocks(k), blocks(v), attn_mask=visible | dead, dropout_p=dropout_p, scale=scale
    )
    out = out.masked_fill(dead, 0.0)  # (B·n, H, W, Dv)
    return out.unflatten(0, (b, n)).transpose(1, 2).flatten(2, 3)[:, :, :length]
