"""Causal linear attention for one new position, from the recurrent state (decoding), ``O(M'·Dv)``.

The step form of :mod:`performers.ops.causal_generic`: a parallel pass followed by steps gives
the outputs of one parallel pass over the whole sequence (up to rounding), and the states agree.
"""

from __future__ import annotations

import torch
from torch import Tensor

from performers.ops.numerics import guarded_divide
from performers.ops.state import FavorState

__all__ = ["causal_linear_attention_step"]


def causal_linear_attention_step(
    q_features: Tensor,
    k_features: Tensor,
    values: Tensor,
    state: FavorState | None,
    *,
    key_log_offset: Tensor | None = None,
    eps: float | None = None,
) -> tuple[Tensor, FavorState]:
    """One position of causal linear attention from the recurrent state, in ``O(M'·Dv)``.

    Args:
        q_features: ``(B, H, M')`` features of the new query.
        k_features: ``(B, H, M')`` features of the new key (true features ``· exp(offset)``).
        values: ``(B, H, Dv)``.
        state: state after the previous positions, or None at the start.
        key_log_offset: ``(B, H)`` running offset ``m_t >= state.log_offset`` of this key, or
            None for plain features.
        eps: denominator guard (see :func:`performers.ops.numerics.guarded_divide`).

    Returns:
        ``(out, new_state)`` with ``out`` of shape ``(B, H, Dv)``.
    """
    offset = key_log_offset if key_log_offset is not None else k_features.new_zeros(k_features.shape[:2])
    kv_new = k_features.unsqueeze(-1) * values.unsqueeze(-2)
    if state is None:
        kv, normalizer = kv_new, k_features
    else:
        # The state moves to the new (larger or equal) offset: every factor is ≤ 1.
        decay = torch.exp((state.log_offset - offset).clamp_max(0.0))
        kv = state.kv * decay[..., None, None] + kv_new
        normalizer = state.normalizer * decay[..., None] + k_features
    numerator = torch.matmul(q_features.unsqueeze(-2), kv).squeeze(-2)
    denominator = (q_features * normalizer).sum(-1)
    return guarded_divide(numerator, denominator, eps), FavorState(kv, normalizer, offset)
