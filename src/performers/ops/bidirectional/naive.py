"""The bidirectional references: every bidirectional path (fused, generic, Triton) is tested against these.

The quadratic definitions of :mod:`performers.ops.naive` (one ``L×L`` kernel matrix, padded keys
removed) with every query seeing every key.
"""

from __future__ import annotations

from torch import Tensor

from performers.ops.kernels import KernelLike
from performers.ops.naive import kernel_attention, naive_favor_attention

__all__ = ["naive_bidirectional_attention", "naive_bidirectional_linear_attention"]


def naive_bidirectional_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    projection: Tensor | None,
    *,
    kernel: KernelLike = "softmax",
    scale: float | None = None,
    key_padding_mask: Tensor | None = None,
) -> Tensor:
    """What ``favor_attention(q, k, v, projection, is_causal=False, ...)`` computes, in ``O(L²)``:
    :func:`performers.ops.naive.naive_favor_attention` with ``is_causal=False``."""
    return naive_favor_attention(
        q, k, v, projection, is_causal=False, kernel=kernel, scale=scale, key_padding_mask=key_padding_mask
    )


def naive_bidirectional_linear_attention(
    q_features: Tensor, k_features: Tensor, v: Tensor, *, key_padding_mask: Tensor | None = None
) -> Tensor:
    """``diag(A1)⁻¹AV`` with the explicit ``A = Q'K'ᵀ``: the reference of
    :func:`performers.ops.bidirectional.generic.bidirectional_linear_attention`."""
    return kernel_attention(q_features, k_features, v, key_padding_mask=key_padding_mask)
