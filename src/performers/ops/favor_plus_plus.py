r"""FAVOR++: generalized exponential (GERF) features with a data-dependent parameter ``A``.

``"favor++"`` is the generalized exponential estimator of Likhosherstov et al., *Chefs' Random
Tables* (NeurIPS 2022, arXiv 2205.15317): ``φ_i(x) = D exp(A‖ω_i‖² + B ω_iᵀx − ‖x‖²/2)/√M``
with ``B = √(1−4A)``, ``D = (1−4A)^{d/4}``, unbiased for ``exp(xᵀy)`` for every ``A < 1/4``
(``A = 0`` is FAVOR+). Its variance is smallest at ``A*(‖x+y‖²)``
(:func:`performers.ops.theory.optimal_positive_parameter`); attention needs one ``A`` shared by
every query and key of a (batch, head), and takes ``A*(φ̄)`` with ``φ̄`` the mean of
``‖q̃_i + k̃_j‖²`` over all pairs, computed in ``O(L·d)`` by the pair-mean identity
(:func:`pair_mean_sq_norm`; the log second moment is affine in ``‖x+y‖²``, so ``A*(φ̄)``
minimizes its pair average). ``A`` is a function of the inputs, not of ``W``, so for fixed
inputs the estimate stays unbiased; gradients flow through ``A`` (the derivative of what is
computed; the extra term has mean zero since ``E_W[φ(q)ᵀφ(k)]`` does not depend on ``A``).

*Causal FAVOR++.* A causal state ``Σ_j φ(k_j)v_jᵀ`` can only be read by a query whose features
use the same ``A`` as every key in it (``A`` and ``B`` enter each feature non-linearly, and a
query-side parameter cannot compensate: unbiasedness with a fixed key side pins
``A_q + A_k``), so a statistic that changes along the sequence — per chunk or running — would
need the past keys re-featurized (quadratic time) or one state per value of ``A``. We therefore
fix one ``A`` per (batch, head) for the whole causal sequence, computed from the first
non-padded position ``p`` alone: ``A = A*(‖q̃_p + k̃_p‖²)``, the pair mean over the only pair
visible at ``p``. Every query ``i ≥ p`` may read position ``p``, so no output depends on a later
token (queries before ``p`` see no key at all), the estimator is unbiased for every query (``A``
does not depend on ``W``), and the recurrent decoder computes the same ``A`` from its first token
and carries it in :class:`~performers.ops.state.FavorState` (``kernel_params``); a continued
sequence (``initial_state``) keeps the ``A`` of its state. A row whose keys so far are all
padding has no ``A`` yet (NaN in the state); its first real key fixes it.

*Float range.* ``A‖ω_f‖²`` spreads FAVOR++'s features by hundreds of nats when ``A`` is very
negative (sharp attention). Bidirectional attention moves each feature's largest key log to
the query side (exact), so every row's largest term is 1 and float32 does not underflow rows.
Causal attention cannot (that maximum reads the future): at mean ``|qᵀk|/√d ≳ 30`` causal
FAVOR++ in float32 may return zero rows; use float64 or FAVOR+ there.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from performers.ops.features import FeatureMapOutput, check_map_inputs, half_sq_norm, project
from performers.ops.theory import optimal_positive_parameter

__all__ = [
    "check_gerf_parameter",
    "favor_plus_plus_from_statistics",
    "favor_plus_plus_parameters",
    "favor_plus_plus_statistics",
    "gerf_features",
    "optimal_positive_features",
    "pair_mean_sq_norm",
]


def _masked_mean(t: Tensor, keep: Tensor | None) -> Tensor:
    # t: (..., L, E), keep: (..., L) bool (broadcastable) → (..., E)
    if keep is None:
        return t.mean(dim=-2)
    weight = keep.to(t.dtype).unsqueeze(-1)
    return (t * weight).sum(dim=-2) / weight.sum(dim=-2).clamp_min(1.0)


def pair_mean_sq_norm(
    x: Tensor, y: Tensor, x_keep: Tensor | None = None, y_keep: Tensor | None = None
) -> Tensor:
    """``φ̄ = mean_{i,j} ‖x_i + y_j‖²`` over all pairs in ``O((Lx + Ly)·D)`` (pair-mean identity).

    ``mean_{i,j} ‖x_i + y_j‖² = mean_i ‖x_i‖² + mean_j ‖y_j‖² + 2 (mean_i x_i)ᵀ(mean_j y_j)``
    (Chefs' Random Tables' homogeneity heuristic, Likhosherstov et al. 2022).

    Args:
        x: ``(..., Lx, D)``; y: ``(..., Ly, D)``.
        x_keep, y_keep: optional ``(..., L)`` bool (broadcastable), True = the position counts.

    Returns:
        ``(...)``.
    """
    sq = _masked_mean((x * x).sum(-1, keepdim=True), x_keep)[..., 0]
    sq = sq + _masked_mean((y * y).sum(-1, keepdim=True), y_keep)[..., 0]
    return sq + 2 * (_masked_mean(x, x_keep) * _masked_mean(y, y_keep)).sum(-1)


def favor_plus_plus_parameters(
    q: Tensor, k: Tensor, *, causal: bool = False, key_padding_mask: Tensor | None = None
) -> Tensor:
    """The FAVOR++ parameter ``A`` of each (batch, head), from scaled queries and keys.

    Bidirectional: ``A*(φ̄)`` with ``φ̄`` the pair mean of ``‖q_i + k_j‖²`` over non-padded keys
    (and, in self-attention ``Lq == Lk``, non-padded queries). Causal: ``A*(‖q_p + k_p‖²)`` at
    the first non-padded position ``p`` (see the module docstring for why one ``A`` per sequence).
    The same as :func:`favor_plus_plus_from_statistics` of :func:`favor_plus_plus_statistics`.

    Args:
        q: ``(B, H, Lq, D)`` and k: ``(B, H, Lk, D)``, already multiplied by ``√scale``.
        causal: use the causal statistic.
        key_padding_mask: ``(B, Lk)`` bool, True = padded.

    Returns:
        ``A`` of shape ``(B, H)``, ``≤ 0``; causal rows whose keys are all padded get NaN (no
        real key yet: the first real key of a continuation fixes ``A``).
    """
    stats = favor_plus_plus_statistics(q, k, causal=causal, key_padding_mask=key_padding_mask)
    return favor_plus_plus_from_statistics(stats, q.shape[-1], causal=causal)


def favor_plus_plus_statistics(
    q: Tensor,
    k: Tensor,
    *,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    self_attention: bool | None = None,
) -> Tensor:
    """What ``A`` depends on, as statistics that combine across shards of one sequence.

    Bidirectional: the sums ``[Σ‖q_i‖², n_q, Σ q_i, Σ‖k_j‖², n_k, Σ k_j]`` over non-padded keys
    (and queries, in self-attention), ``S = 2D + 4``: those of a sequence split into shards are
    the sums of the shards' (an all-reduce, differentiable). Causal: ``[‖q_p + k_p‖²]`` at the
    first non-padded position ``p``, ``S = 1``, NaN where every key is padded: that of a split
    sequence is the first shard's that is not NaN.

    Args:
        q: ``(B, H, Lq, D)`` and k: ``(B, H, Lk, D)``, already multiplied by ``√scale``.
        causal: the causal statistic.
        key_padding_mask: ``(B, Lk)`` bool, True = padded.
        self_attention: queries and keys are the same positions (their padding is shared);
            default ``Lq == Lk``.

    Returns:
        ``(B, H, S)``.
    """
    d = q.shape[-1]
    if causal:
        if key_padding_mask is None:
            first_q, first_k = q[:, :, :1], k[:, :, :1]
            return ((first_q + first_k) ** 2).sum(-1)
        first = (~key_padding_mask).long().argmax(dim=1)  # (B,); 0 if every key is padded
        index = first[:, None, None, None].expand(q.shape[0], q.shape[1], 1, d)
        phi = ((q.gather(2, index) + k.gather(2, index)) ** 2).sum(-1)
        # A row with no real key yet has no A: NaN, fixed later by its first real key
        # (attention carries it in the causal state and fills it on continuation).
        return phi.masked_fill(key_padding_mask.all(dim=1)[:, None, None], float("nan"))
    if self_attention is None:
        self_attention = q.shape[2] == k.shape[2]
    key_keep = None if key_padding_mask is None else ~key_padding_mask[:, None, :]
    query_keep = key_keep if self_attention else None
    return torch.cat([*_sums(q, query_keep), *_sums(k, key_keep)], dim=-1)


def _sums(x: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    # x: (B, H, L, D), keep: (B, 1, L) bool or None → Σ‖x‖² (B, H, 1), n (B, H, 1), Σx (B, H, D)
    if keep is None:
        count = x.new_full((*x.shape[:2], 1), float(x.shape[2]))
        return (x * x).sum(dim=(-2, -1))[..., None], count, x.sum(dim=-2)
    weight = keep.to(x.dtype).unsqueeze(-1)
    count = weight.sum(dim=-2).expand(*x.shape[:2], 1)
    return ((x * x).sum(-1, keepdim=True) * weight).sum(dim=-2), count, (x * weight).sum(dim=-2)


def favor_plus_plus_from_statistics(stats: Tensor, dim: int, *, causal: bool = False) -> Tensor:
    """``A`` ``(B, H)`` from :func:`favor_plus_plus_statistics` ``(B, H, S)`` (of one shard or
    combined over all of them) for inputs of size ``dim``: ``A*(φ̄)`` with the pair mean
    ``φ̄ = mean‖q‖² + mean‖k‖² + 2 (mean q)ᵀ(mean k)`` (:func:`pair_mean_sq_norm`), or causally
    ``A*`` of the first position's ``‖q_p + k_p‖²`` (NaN stays NaN)."""
    if causal:
        return optimal_positive_parameter(stats[..., 0], dim)
    sq_q, n_q, sum_q = stats[..., 0], stats[..., 1].clamp_min(1.0), stats[..., 2 : 2 + dim]
    sq_k, n_k, sum_k = stats[..., 2 + dim], stats[..., 3 + dim].clamp_min(1.0), stats[..., 4 + dim :]
    mean_dot = (sum_q * sum_k).sum(-1) / (n_q * n_k)
    return optimal_positive_parameter(sq_q / n_q + sq_k / n_k + 2 * mean_dot, dim)


def optimal_positive_features(
    x: Tensor, projection: Tensor | None, a: Tensor | float, *, gaussian: bool = False
) -> FeatureMapOutput:
    """Generalized exponential (GERF) positive features; FAVOR++ at ``a = A*``.

    ``φ_i(x) = D exp(A‖ω_i‖² + B ω_iᵀx + C‖x‖²) / √M`` with ``B = √(1−4A)``,
    ``D = (1−4A)^{d/4}`` and ``C = −1/2`` (softmax kernel ``exp(xᵀy)``) or ``C = −1``
    (``gaussian``: ``exp(−‖x−y‖²/2)``) — Likhosherstov et al., *Chefs' Random Tables*, 2022.
    Unbiased for ``ω_i ~ N(0, I)`` (iid or sign-fixed orthogonal with χ norms) and any
    ``A < 1/4``; finite variance needs ``A < 1/8``.

    Args:
        x: ``(..., L, D)``.
        projection: ``(M, D)`` (or a batch ``(..., M, D)`` broadcasting with ``x``).
        a: ``A``, a float or a tensor broadcasting with ``x.shape[:-2]`` (e.g. ``(B, H)``), ``< 1/4``.
        gaussian: estimate the Gaussian kernel instead of the softmax kernel.

    Returns:
        features ``(..., L, M)`` as ``exp(log)``.
    """
    check_map_inputs("optimal_positive_features", x, projection)
    a = torch.as_tensor(a, dtype=x.dtype, device=x.device)
    check_gerf_parameter(a)
    return gerf_features(x, projection, a, gaussian=gaussian)


def check_gerf_parameter(a: Tensor) -> None:
    """Raise ``ValueError`` unless every GERF parameter ``A`` is ``< 1/4`` (``B = √(1−4A)`` real).

    For parameters a user passes (``feature_map``, :func:`optimal_positive_features`); attention
    computes its own ``A ≤ 0`` and skips this check (it would synchronize host and device).
    """
    if not bool(torch.all(a < 0.25)):
        raise ValueError(f"the GERF parameter A must be < 1/4 (B = sqrt(1 - 4A) real), got {a.max().item()}")


def gerf_features(
    x: Tensor, projection: Tensor | None, a: Tensor | float, *, gaussian: bool = False
) -> FeatureMapOutput:
    """:func:`optimal_positive_features` without the check of ``A`` (see :func:`check_gerf_parameter`).

    ``x``: ``(..., L, D)``, ``projection``: ``(M, D)``, ``a``: broadcasting with ``x.shape[:-2]``
    → features ``(..., L, M)`` as ``exp(log)``.
    """
    check_map_inputs("optimal_positive_features", x, projection)
    a = torch.as_tensor(a, dtype=x.dtype, device=x.device)[..., None, None]  # broadcast over (L, M)
    d, m = x.shape[-1], projection.shape[-2]
    one_minus_4a = 1 - 4 * a
    log = torch.sqrt(one_minus_4a) * project(x, projection)
    # ‖ω_i‖²: (..., 1, M), also for a batch of projections (..., M, D).
    log = log + a * (projection * projection).sum(-1).unsqueeze(-2) + 0.25 * d * torch.log(one_minus_4a)
    norm = half_sq_norm(x)
    log = log - (2 * norm if gaussian else norm) - 0.5 * math.log(m)
    return FeatureMapOutput(log=log, linear=None)
