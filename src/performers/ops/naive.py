"""Quadratic references: every fast path of :mod:`performers.ops` is tested against these.

They build ``L×L`` matrices on purpose and take the shortest route to the definition:
exact softmax attention, attention with the explicit kernel matrix ``φ(Q)φ(K)ᵀ`` (bidirectional
and causal, with key padding), and the naive FAVOR estimator (plain, unstabilized feature maps
fed to the explicit kernel matrix). This module imports no fast path: only the feature maps,
the kernel registry and the shared numeric helpers.

Each direction names its references beside its paths, built on these:
:mod:`performers.ops.bidirectional.naive` and :mod:`performers.ops.causal.naive` (which adds
the recurrence a causal state stands for).
"""

from __future__ import annotations

import torch
from torch import Tensor

from performers.ops.kernels import KernelLike, feature_map, get_kernel
from performers.ops.masks import resolve_is_causal
from performers.ops.numerics import guarded_divide

__all__ = ["exact_attention", "kernel_attention", "naive_favor_attention"]


def _keep_mask(
    lq: int, lk: int, causal: bool, key_padding_mask: Tensor | None, device: torch.device
) -> Tensor | None:
    """Which (query, key) pairs count: ``(Lq, Lk)`` causal, ``(B, 1, 1, Lk)`` padding, both, or None."""
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
    is_causal: bool = False,
    scale: float | None = None,
    key_padding_mask: Tensor | None = None,
    causal: bool | None = None,
) -> Tensor:
    """Softmax attention ``softmax(scale·QKᵀ)V`` computed explicitly.

    Args:
        q: ``(B, H, Lq, D)``; k: ``(B, H, Lk, D)``; v: ``(B, H, Lk, Dv)``.
        is_causal: mask keys after the query position (diagonal included); ``causal`` is its
            older spelling.
        scale: defaults to ``1/√D``.
        key_padding_mask: ``(B, Lk)`` bool, True marks a padded key.

    Returns:
        ``(B, H, Lq, Dv)``. A row with no visible key gives 0.
    """
    causal = resolve_is_causal(is_causal, causal)
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
    is_causal: bool = False,
    key_padding_mask: Tensor | None = None,
    normalize: bool = True,
    causal: bool | None = None,
) -> Tensor:
    """Attention with the explicit kernel matrix ``A = Q'K'ᵀ``: ``diag(A1)⁻¹ A V``.

    Args:
        q_features: ``(B, H, Lq, M')``; k_features: ``(B, H, Lk, M')``; v: ``(B, H, Lk, Dv)``.
        is_causal: query ``i`` sees keys ``j ≤ i``; ``causal`` is its older spelling.
        key_padding_mask: ``(B, Lk)`` bool, True marks a padded key.
        normalize: divide by the row sums (a row with no visible key gives 0).

    Returns:
        ``(B, H, Lq, Dv)``.
    """
    causal = resolve_is_causal(is_causal, causal)
    scores = torch.matmul(q_features, k_features.transpose(-2, -1))
    keep = _keep_mask(scores.shape[-2], scores.shape[-1], causal, key_padding_mask, scores.device)
    if keep is not None:
        scores = scores.masked_fill(~keep, 0.0)
    numerator = torch.matmul(scores, v)
    if not normalize:
        return numerator
    return guarded_divide(numerator, scores.sum(-1))


def naive_favor_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    projection: Tensor | None,
    *,
    is_causal: bool = False,
    kernel: KernelLike = "softmax",
    scale: float | None = None,
    key_padding_mask: Tensor | None = None,
    causal: bool | None = None,
) -> Tensor:
    """What :func:`performers.ops.favor_attention` computes, by definition, in ``O(L²)``.

    The plain (unstabilized) features ``φ(q·√scale)`` and ``φ(k·√scale)`` of
    :func:`performers.ops.feature_map` fed to :func:`kernel_attention`. Kernels with
    data-dependent parameters (FAVOR++) get them as attention computes them,
    ``kernel.parameters(q·√scale, k·√scale, causal=..., key_padding_mask=...)``. Plain features
    can underflow or overflow where the stabilized fast paths do not: use float64 and moderate
    inputs.

    Args:
        q: ``(B, H, Lq, D)``; k: ``(B, H, Lk, D)``; v: ``(B, H, Lk, Dv)``.
        projection: ``(M, D)``, or None for generalized kernels.
        is_causal, kernel, scale, key_padding_mask, causal: as in
            :func:`performers.ops.favor_attention`.

    Returns:
        ``(B, H, Lq, Dv)``.
    """
    causal = resolve_is_causal(is_causal, causal)
    kern = get_kernel(kernel)
    s = (q.shape[-1] ** -0.5 if scale is None else scale) ** 0.5
    q_scaled, k_scaled = q * s, k * s
    params = None
    if kern.parameters is not None:
        params = kern.parameters(q_scaled, k_scaled, causal=causal, key_padding_mask=key_padding_mask)
        # NaN marks a causal row whose keys are all padded (no parameter yet): its keys carry no
        # weight, so any finite value gives the same (zero) output, as in attention.
        params = torch.nan_to_num(params, nan=0.0)
    q_features = feature_map(q_scaled, projection, kern, params)
    k_features = feature_map(k_scaled, projection, kern, params)
    return kernel_attention(q_features, k_features, v, is_causal=causal, key_padding_mask=key_padding_mask)
