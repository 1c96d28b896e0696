"""The causal references: every causal path (fused, chunked generic, Triton, the one-position
step) is tested against these.

:func:`naive_causal_attention` is the quadratic definition of :mod:`performers.ops.naive` with
query ``i`` seeing keys ``j ≤ i``; :func:`naive_recurrent_linear_attention` is the recurrence
the state (:class:`~performers.ops.state.FavorState`) stands for, one position at a time, on
plain features: the reference for ``initial_state`` / ``return_state`` and for decoding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from performers.ops.kernels import KernelLike
from performers.ops.naive import naive_favor_attention
from performers.ops.numerics import guarded_divide
from performers.ops.state import FavorState

__all__ = ["naive_causal_attention", "naive_recurrent_linear_attention"]


def naive_causal_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    projection: Tensor | None,
    *,
    kernel: KernelLike = "softmax",
    scale: float | None = None,
    key_padding_mask: Tensor | None = None,
) -> Tensor:
    """What ``favor_attention(q, k, v, projection, is_causal=True, ...)`` computes, in ``O(L²)``:
    :func:`performers.ops.naive.naive_favor_attention` with ``is_causal=True``."""
    return naive_favor_attention(
        q, k, v, projection, is_causal=True, kernel=kernel, scale=scale, key_padding_mask=key_padding_mask
    )


def naive_recurrent_linear_attention(
    q_features: Tensor,
    k_features: Tensor,
    v: Tensor,
    initial_state: FavorState | None = None,
) -> tuple[Tensor, FavorState]:
    """Causal linear attention by its recurrence: ``S_t = S_{t-1} + k'_t v_tᵀ``,
    ``z_t = z_{t-1} + k'_t``, ``out_t = q'_tᵀS_t / q'_tᵀz_t``, one position at a time.

    Args:
        q_features, k_features: ``(B, H, L, M')`` plain (unstabilized) features.
        v: ``(B, H, L, Dv)``.
        initial_state: the state before the first position (its sums are brought to units of
            ``exp(0)``), or None (zero sums).

    Returns:
        ``(out (B, H, L, Dv), state)``: the state after the last position, in units of
        ``exp(0)`` (``log_offset`` zero).
    """
    b, h, length, m = k_features.shape
    if initial_state is None:
        kv = k_features.new_zeros(b, h, m, v.shape[-1])
        normalizer = k_features.new_zeros(b, h, m)
    else:
        scale = torch.exp(initial_state.log_offset.to(k_features.dtype))
        kv = initial_state.kv.to(k_features.dtype) * scale[..., None, None]
        normalizer = initial_state.normalizer.to(k_features.dtype) * scale[..., None]
    outputs = []
    for t in range(length):
        kv = kv + k_features[:, :, t, :, None] * v[:, :, t, None, :]
        normalizer = normalizer + k_features[:, :, t]
        numerator = torch.einsum("bhm,bhmd->bhd", q_features[:, :, t], kv)
        outputs.append(guarded_divide(numerator, (q_features[:, :, t] * normalizer).sum(-1)))
    out = torch.stack(outputs, dim=2) if outputs else v.new_zeros(b, h, 0, v.shape[-1])
    return out, FavorState(kv, normalizer, k_features.new_zeros(b, h))
