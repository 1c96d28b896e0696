"""Generic bidirectional linear attention on materialized features: ``Q'(K'ᵀ[V 1])``.

Serves every kernel (any features, signed or not); the exponential kernels take the fused path
(:mod:`performers.ops.bidirectional.fused`) unless an explicit path is requested.
"""

from __future__ import annotations

import torch
from torch import Tensor

from performers.ops.numerics import guarded_divide, with_ones

__all__ = ["bidirectional_linear_attention"]


def bidirectional_linear_attention(
    q_features: Tensor, k_features: Tensor, values: Tensor, eps: float | None = None
) -> Tensor:
    """Normalized ``diag(Q'K'ᵀ1)⁻¹ Q'(K'ᵀV)`` in ``O(L·M'·Dv)``.

    Args:
        q_features: ``(B, H, Lq, M')``; k_features: ``(B, H, Lk, M')`` (padded keys already
            zero); values: ``(B, H, Lk, Dv)``.
        eps: denominator guard (see :func:`performers.ops.numerics.guarded_divide`).

    Returns:
        ``(B, H, Lq, Dv)``.
    """
    # Q'(K'ᵀ[V 1]): one (M' × (Dv+1)) summary, then one matmul per query.
    values_aug = with_ones(values)
    summary = torch.matmul(k_features.transpose(-2, -1), values_aug)
    out = torch.matmul(q_features, summary)
    return guarded_divide(out[..., :-1], out[..., -1], eps)
