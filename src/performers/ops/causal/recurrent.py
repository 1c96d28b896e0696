"""Causal linear attention for one new position, from the recurrent state (decoding), ``O(M'·Dv)``.

The step form of :mod:`performers.ops.causal.generic`: a parallel pass followed by steps gives
the outputs of one parallel pass over the whole sequence (up to rounding), and the states agree.
:func:`exp_attention_step` serves the exponential kernels in few ops, :func:`generic_attention_step`
every kernel (its features from :mod:`performers.ops.generic_features`); the Triton step is
:mod:`performers.ops.triton.decode`. :func:`performers.ops.favor_attention_step` chooses.
"""

from __future__ import annotations

import torch
from torch import Tensor

from performers.ops.features import ExpForm
from performers.ops.generic_features import attention_features, state_params
from performers.ops.kernels import Kernel
from performers.ops.numerics import guarded_divide
from performers.ops.state import FavorState

__all__ = ["causal_linear_attention_step", "exp_attention_step", "generic_attention_step"]


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


def exp_attention_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    state: FavorState | None,
    form: ExpForm,
    *,
    scale: float,
    eps: float | None = None,
    inplace: bool = False,
) -> tuple[Tensor, FavorState]:
    """One causal position for an exponential map ``exp(P(√s·x) − a·s‖x‖²/2 − c)``, in few ops.

    The same result as features from :func:`performers.ops.features.stabilized_exp_features`
    followed by :func:`causal_linear_attention_step` (tested), written for decoding, where each
    tensor is small and the cost is the number of operations: both log-features come from one
    product, the state moves to the new running maximum ``max(m, max_f log φ_f(k))`` and takes
    the key in one ``addcmul``.

    Args:
        q, k: ``(B, H, 1, D)``; v: ``(B, H, 1, Dv)``, in one floating dtype.
        state: the state before this position (:class:`FavorState` units), or None.
        form: the map; scale: ``√s``; eps: denominator guard.
        inplace: update ``state``'s tensors in place and return them (decoding loops: no new
            ``M'×Dv`` tensor per token); only outside autograd and when the state is already in
            the compute dtype, otherwise the update is out of place.

    Returns:
        ``(out (B, H, 1, Dv), new_state)``.
    """
    dtype = q.dtype
    rows = form.rows if form.rows.dtype == dtype else form.rows.to(dtype)
    # One product for both rows, scaled after (fewer elements than the rows).
    log_q, log_k = torch.matmul(torch.cat([q, k], dim=2), rows.t()).mul_(scale).unbind(2)  # (B, H, M')
    if form.norm:
        log_k = log_k - (0.5 * form.norm * scale * scale) * k.square().sum(-1)
    key_max = log_k.amax(dim=-1, keepdim=True)  # (B, H, 1)
    if state is None:
        k_features = (log_k - key_max).exp_()
        kv, normalizer = k_features.unsqueeze(-1) * v, k_features
        new_state = FavorState(kv, normalizer, key_max.squeeze(-1) - form.log_const)
        return _readout(log_q, kv, normalizer, eps), new_state
    previous = state.log_offset.unsqueeze(-1) + form.log_const
    offset = torch.maximum(previous, key_max)
    decay = (previous - offset).exp_()  # (B, H, 1), ≤ 1
    k_features = (log_k - offset).exp_()
    kv, normalizer = state.kv, state.normalizer
    if inplace and not torch.is_grad_enabled() and kv.dtype == dtype == normalizer.dtype:
        kv.mul_(decay.unsqueeze(-1)).addcmul_(k_features.unsqueeze(-1), v)
        normalizer.mul_(decay).add_(k_features)
        log_offset = state.log_offset.copy_(offset.squeeze(-1) - form.log_const)
    else:
        kv = torch.addcmul(kv.to(dtype) * decay.unsqueeze(-1), k_features.unsqueeze(-1), v)
        normalizer = torch.addcmul(k_features, normalizer.to(dtype), decay)
        log_offset = offset.squeeze(-1) - form.log_const
    return _readout(log_q, kv, normalizer, eps), FavorState(kv, normalizer, log_offset)


def _readout(log_q: Tensor, kv: Tensor, normalizer: Tensor, eps: float | None) -> Tensor:
    """``φ(q)kv / φ(q)z`` for row-stabilized query features: ``(B, H, 1, Dv)``."""
    q_features = (log_q - log_q.amax(dim=-1, keepdim=True)).exp_()
    numerator = torch.matmul(q_features.unsqueeze(-2), kv)
    denominator = (q_features * normalizer).sum(-1)
    # Positive features: the denominator is >= 0, and the guard of safe_reciprocal is this.
    eps = torch.finfo(denominator.dtype).tiny if eps is None else eps
    inverse = torch.where(denominator >= eps, denominator.reciprocal(), 0.0)
    return numerator.mul_(inverse[..., None, None])


def generic_attention_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    state: FavorState | None,
    kernel: Kernel,
    projection: Tensor | None,
    *,
    scale: float,
    eps: float | None = None,
) -> tuple[Tensor, FavorState]:
    """One causal position of any kernel: its stabilized features, then
    :func:`causal_linear_attention_step`.

    Args:
        q, k: ``(B, H, 1, D)``; v: ``(B, H, 1, Dv)``, in one floating dtype.
        state: the state before this position, or None; kernel, projection: the feature map.
        scale: ``√s``; eps: denominator guard.

    Returns:
        ``(out (B, H, 1, Dv), new_state)``, the state with the map's parameters (FAVOR++'s ``A``).
    """
    q_features, k_features, offsets, params = attention_features(
        kernel,
        q,
        k,
        projection,
        scale,
        causal=True,
        key_padding_mask=None,
        initial_offset=None if state is None else state.log_offset.to(q.dtype),
        params=state_params(kernel, state, q.dtype),
    )
    out, new_state = causal_linear_attention_step(
        q_features[:, :, 0],
        k_features[:, :, 0],
        v[:, :, 0],
        state,
        key_log_offset=None if offsets is None else offsets[..., 0],
        eps=eps,
    )
    return out.unsqueeze(2), new_state._replace(kernel_params=params)
