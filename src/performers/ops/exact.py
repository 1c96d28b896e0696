"""Exact (quadratic) references: softmax attention and explicit kernel matrices.

These build ``L×L`` matrices on purpose; they are the ground truth for tests and benchmarks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from performers.ops.causal import guarded_divide

__all__ = ["exact_attention", "kernel_attention", "softmax_kernel"]


def softmax_kernel(x: Tensor, y: Tensor, *, scale: float = 1.0) -> Tensor:
    """``exp(scale · x yᵀ)``: ``(..., Lx, D)``, ``(..., Ly, D)`` → ``(..., Lx, Ly)``."""
    return torch.exp(scale * torch.matmul(x, y.transpose(-2, -1)))


def _keep_mask(lq: int, lk: int, causal: bool, key_padding_mask: Tensor | None, device) -> Tensor | None:
    keep = None
    if causal:
        keep = torch.ones(lq, lk, dtype=torch.bool, device=device).tril()
    if key_padding_mask is not None:
        keys = ~key_padding_mask[:, None, None, :]
        keep = keys if keep is None else keep & keys
    return keep


def exact_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    key_padding_mask: Tensor | None = None,
) -> Tensor:
    """Softmax attention ``softmax(scale·QKᵀ)V`` computed explicitly.

    Args:
        q: ``(B, H, Lq, D)``; k: ``(B, H, Lk, D)``; v: ``(B, H, Lk, Dv)``.
        causal: mask keys after the query position (diagonal included).
        scale: defaults to ``1/√D``.
        key_padding_mask: ``(B, Lk)`` bool, True marks a padded key.

    Returns:
        ``(B, H, Lq, Dv)``. A row with no visible key gives 0.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = scale * torch.matmul(q, k.transpose(-2, -1))
    keep = _keep_mask(q.shape[-2], k.shape[-2], causal, key_padding_mask, q.device)
    if keep is not None:
        logits = logits.masked_fill(~keep, float("-inf"))
    weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    return torch.matmul(weights, v)


def kernel_attention(
    q_features: Tensor,
    k_features: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    normalize: bool = True,
) -> Tensor:
    """Attention with the explicit kernel matrix ``A = Q'K'ᵀ``: ``diag(A1)⁻¹ A V``.

    The quadratic reference for linear attention given features ``(B, H, L, M)``.
    """
    scores = torch.matmul(q_features, k_features.transpose(-2, -1))
    keep = _keep_mask(scores.shape[-2], scores.shape[-1], causal, key_padding_mask, scores.device)
    if keep is not None:
        scores = scores.masked_fill(~keep, 0.0)
    numerator = torch.matmul(scores, v)
    if not normalize:
        return numerator
    return guarded_divide(numerator, scores.sum(-1))
