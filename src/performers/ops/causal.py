r"""Causal (unidirectional) linear attention: chunked prefix sums and the recurrent step.

For features ``Q' = φ(Q)``, ``K' = φ(K)`` (``(B, H, L, M)``) and values ``V`` (``(B, H, L, Dv)``)
the causal output is ``out_i = Σ_{j≤i} (q'_iᵀk'_j) v_j / Σ_{j≤i} q'_iᵀk'_j`` (paper eq. (2)
with FAVOR's ``Ã ≈ tril(Q'K'ᵀ)``).

The sequence is cut into chunks of ``C`` positions. Inside a chunk the masked ``C×C`` block
``tril(Q'_c K'_cᵀ)`` is formed explicitly; across chunks a running state
``S = Σ_j k'_j [v_j, 1]ᵀ`` (``M × (Dv+1)``) carries the past. Only one state per chunk is kept,
so forward and backward memory is ``O(L·(M + Dv + C) + (L/C)·M·Dv)`` and no tensor of
``L·M·Dv`` elements is ever built (the plain prefix-sum formulation of the paper's App. B.1
materializes ``G^{PS}`` of that size).

Key features may come with per-position log offsets ``m_j`` (non-decreasing; see
:func:`performers.ops.features.stabilize_keys`): the true key feature is ``k'_j·exp(m_j)``.
Query ``i`` then reads every key scaled by ``exp(m_j - m_i) ≤ 1`` and the state in units of
``exp(m_i)``; the common factor ``exp(-m_i)`` cancels between numerator and denominator.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FavorState",
    "causal_linear_attention",
    "causal_linear_attention_step",
    "chunk_rescale_factors",
    "guarded_divide",
    "safe_reciprocal",
]

DEFAULT_CHUNK_SIZE = 64


class FavorState(NamedTuple):
    """Recurrent state of causal linear attention after a prefix of keys.

    Attributes:
        kv: ``(B, H, M', Dv)``, ``Σ_j k'_j v_jᵀ`` in units of ``exp(log_offset)``.
        normalizer: ``(B, H, M')``, ``Σ_j k'_j`` in the same units.
        log_offset: ``(B, H)``, the running key maximum ``m`` the sums are expressed in.
        kernel_params: ``(B, H)`` data-dependent parameters of the feature map the sums were
            built with (FAVOR++'s ``A``), fixed for the rest of the sequence; None for maps
            without parameters.
    """

    kv: Tensor
    normalizer: Tensor
    log_offset: Tensor
    kernel_params: Tensor | None = None


def guarded_divide(numerator: Tensor, denominator: Tensor, eps: float | None = None) -> Tensor:
    """``numerator / denominator``, defined as 0 (with zero gradient) where ``|denominator| < eps``.

    ``numerator``: ``(..., Dv)``, ``denominator``: ``(...)``. ``eps`` defaults to the smallest
    normal number of the dtype: with nonnegative features the denominator only gets that small
    when a query sees no key at all (every key padded, or every term underflowed), and then
    the numerator is 0 too; 0 is the natural output and keeps gradients finite.
    """
    return numerator * safe_reciprocal(denominator, eps).unsqueeze(-1)


def safe_reciprocal(denominator: Tensor, eps: float | None = None) -> Tensor:
    """``1 / denominator`` where ``|denominator| >= eps``, else 0 (see :func:`guarded_divide`)."""
    if eps is None:
        eps = torch.finfo(denominator.dtype).tiny
    small = denominator.abs() < eps
    return torch.where(small, torch.zeros_like(denominator), 1.0 / torch.where(small, 1.0, denominator))


class _DecayedPrefixScan(torch.autograd.Function):
    """``P_0 = init``, ``P_{c+1} = γ_c P_c + X_c``; returns all ``P_c`` (c < N) and ``P_N``.

    Written as a Function so that the per-chunk Python loop writes into one preallocated
    buffer forward and backward; indexing a tensor in an autograd loop would make every step's
    backward allocate (and zero) a full-size gradient, ``O(N²)`` work.
    """

    @staticmethod
    def forward(ctx, summaries: Tensor, decay: Tensor, init: Tensor) -> tuple[Tensor, Tensor]:
        prefix = torch.empty_like(summaries)
        running = init
        for c in range(summaries.shape[2]):
            prefix[:, :, c] = running
            running = torch.addcmul(summaries[:, :, c], running, decay[:, :, c, None, None])
        ctx.save_for_backward(decay)
        return prefix, running

    @staticmethod
    def backward(ctx, grad_prefix: Tensor | None, grad_final: Tensor | None):
        (decay,) = ctx.saved_tensors
        n = decay.shape[2]
        if grad_prefix is None and grad_final is None:
            return None, None, None
        reference = grad_prefix if grad_prefix is not None else grad_final
        shape = (*decay.shape, *reference.shape[-2:]) if grad_prefix is None else grad_prefix.shape
        grad_summaries = reference.new_empty(shape)
        adjoint = grad_final if grad_final is not None else reference.new_zeros(shape[:2] + shape[3:])
        for c in range(n - 1, -1, -1):
            grad_summaries[:, :, c] = adjoint  # ∂P_{c+1}/∂X_c = I
            adjoint = adjoint * decay[:, :, c, None, None]
            if grad_prefix is not None:
                adjoint = adjoint + grad_prefix[:, :, c]
        return grad_summaries, None, adjoint


def decayed_prefix_scan(summaries: Tensor, decay: Tensor, init: Tensor) -> tuple[Tensor, Tensor]:
    """Chunk states before each chunk, ``(B, H, N, M, E)``, and the state after the last one.

    ``summaries``: ``(B, H, N, M, E)``, ``decay``: ``(B, H, N)`` (not differentiated: it comes
    from detached stabilizer offsets), ``init``: ``(B, H, M, E)``.
    """
    return _DecayedPrefixScan.apply(summaries, decay.detach(), init)


def _empty_state_like(q_features: Tensor, k_features: Tensor, values: Tensor) -> Tensor:
    b, h = k_features.shape[:2]
    return k_features.new_zeros(b, h, k_features.shape[-1], values.shape[-1] + 1)


def chunk_rescale_factors(
    chunk_offsets: Tensor, state_offset: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The rescaling factors of the chunked algorithm with key offsets, all ``≤ 1``.

    Args:
        chunk_offsets: ``(B, H, N, C)`` key offsets ``m_j`` (non-decreasing along positions).
        state_offset: ``(B, H)`` offset of the state entering the first chunk.

    Returns:
        ``within`` ``(B, H, N, C, C)``: ``exp(m_j - m_i)`` for key ``j ≤ i`` in a chunk, 0 above
        the diagonal; ``to_end`` ``(B, H, N, C, 1)``: key ``j`` in units of its chunk's last
        offset; ``decay`` ``(B, H, N)``: the incoming state of each chunk to that offset;
        ``to_query`` ``(B, H, N, C, 1)``: the incoming state to query ``i``'s offset. Exponents are
        clamped at 0: leading padded keys carry a placeholder offset and zero features.
    """
    c = chunk_offsets.shape[-1]
    causal_mask = torch.ones(c, c, dtype=torch.bool, device=chunk_offsets.device).tril()
    diff = chunk_offsets.unsqueeze(-2) - chunk_offsets.unsqueeze(-1)
    within = torch.exp(diff.clamp_max(0.0)).mul_(causal_mask)
    chunk_end = chunk_offsets[..., -1]
    before = torch.cat([state_offset.unsqueeze(-1), chunk_end[..., :-1]], dim=-1)
    to_end = torch.exp((chunk_offsets - chunk_end.unsqueeze(-1)).clamp_max(0.0)).unsqueeze(-1)
    decay = torch.exp((before - chunk_end).clamp_max(0.0))
    to_query = torch.exp((before.unsqueeze(-1) - chunk_offsets).clamp_max(0.0)).unsqueeze(-1)
    return within, to_end, decay, to_query


def _chunked(
    q_features: Tensor,
    k_features: Tensor,
    values_aug: Tensor,
    offsets: Tensor | None,
    state: Tensor,
    state_offset: Tensor | None,
    chunk: int,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Causal attention over ``L = N·C`` positions; returns ``(out_aug, state, state_offset)``."""
    b, h, length, m = q_features.shape
    e = values_aug.shape[-1]
    n = length // chunk
    qc = q_features.reshape(b, h, n, chunk, m)
    kc = k_features.reshape(b, h, n, chunk, m)
    vc = values_aug.reshape(b, h, n, chunk, e)

    scores = torch.matmul(qc, kc.transpose(-2, -1))  # (B, H, N, C, C)
    if offsets is None:
        scores = torch.tril(scores)
        summaries = torch.matmul(kc.transpose(-2, -1), vc)  # (B, H, N, M, E)
        # Exclusive prefix sum over chunks, seeded with the incoming state.
        seeded = torch.cat([state.unsqueeze(2), summaries[:, :, :-1]], dim=2)
        prefix = torch.cumsum(seeded, dim=2)
        final = prefix[:, :, -1] + summaries[:, :, -1]
        inter = torch.matmul(qc, prefix)
        return (inter + torch.matmul(scores, vc)).reshape(b, h, length, e), final, None

    oc = offsets.reshape(b, h, n, chunk)
    within, to_end, decay, to_query = chunk_rescale_factors(oc, state_offset)
    # Row i reads key j <= i scaled by exp(m_j - m_i); chunk summaries are in units of
    # exp(m_end) of their chunk (the factor folded into the values).
    scores = scores * within
    summaries = torch.matmul(kc.transpose(-2, -1), vc * to_end)  # (B, H, N, M, E)
    prefix_states, running = decayed_prefix_scan(summaries, decay, state)  # offsets `before`

    inter = torch.matmul(qc, prefix_states) * to_query
    out = inter + torch.matmul(scores, vc)
    return out.reshape(b, h, length, e), running, oc[..., -1, -1]


def causal_linear_attention(
    q_features: Tensor,
    k_features: Tensor,
    values: Tensor,
    *,
    key_log_offsets: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    initial_state: FavorState | None = None,
    return_state: bool = False,
    eps: float | None = None,
) -> Tensor | tuple[Tensor, FavorState]:
    """Normalized causal linear attention, chunked.

    Args:
        q_features: ``(B, H, L, M)`` query features ``φ(q)``.
        k_features: ``(B, H, L, M)`` key features (stabilized when ``key_log_offsets`` given).
        values: ``(B, H, L, Dv)``.
        key_log_offsets: ``(B, H, L)`` non-decreasing offsets with true key features
            ``k_features · exp(offsets)``; None means all zero.
        chunk_size: positions per chunk ``C``.
        initial_state: state of a preceding prefix (from ``return_state=True`` or the step form).
        return_state: also return the :class:`FavorState` after the last position.
        eps: denominator guard, see :func:`guarded_divide`.

    Returns:
        ``(B, H, L, Dv)`` outputs, and the final state if ``return_state``.
    """
    b, h, length, _ = k_features.shape
    values_aug = torch.cat([values, values.new_ones(*values.shape[:-1], 1)], dim=-1)
    if initial_state is None:
        state = _empty_state_like(q_features, k_features, values)
        state_offset = None
        if key_log_offsets is not None:
            state_offset = key_log_offsets[..., 0] if length > 0 else k_features.new_zeros(b, h)
    else:
        state = torch.cat([initial_state.kv, initial_state.normalizer.unsqueeze(-1)], dim=-1)
        state = state.to(k_features.dtype)
        state_offset = initial_state.log_offset.to(k_features.dtype)
        if key_log_offsets is None:
            # Plain features are in units of exp(0): bring the state there.
            state = state * torch.exp(state_offset)[..., None, None]
            state_offset = None

    chunk = max(1, min(chunk_size, length))
    main = (length // chunk) * chunk
    outputs = []
    pieces = [(0, main, chunk)] if main else []
    if main < length:
        pieces.append((main, length, length - main))
    for start, stop, size in pieces:
        out, state, new_offset = _chunked(
            q_features[:, :, start:stop],
            k_features[:, :, start:stop],
            values_aug[:, :, start:stop],
            None if key_log_offsets is None else key_log_offsets[..., start:stop],
            state,
            state_offset,
            size,
        )
        state_offset = new_offset
        outputs.append(out)
    out_aug = torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]
    out = guarded_divide(out_aug[..., :-1], out_aug[..., -1], eps)
    if not return_state:
        return out
    final_offset = state_offset if state_offset is not None else k_features.new_zeros(b, h)
    return out, FavorState(state[..., :-1], state[..., -1], final_offset)


def causal_linear_attention_step(
    q_features: Tensor,
    k_features: Tensor,
    values: Tensor,
    state: FavorState | None,
    *,
    key_log_offset: Tensor | None = None,
    eps: float | None = None,
) -> tuple[Tensor, FavorState]:
    """One position of causal linear attention from the recurrent state, in ``O(M·Dv)``.

    Args:
        q_features: ``(B, H, M)`` features of the new query.
        k_features: ``(B, H, M)`` features of the new key (true features ``· exp(offset)``).
        values: ``(B, H, Dv)``.
        state: state after the previous positions, or None at the start.
        key_log_offset: ``(B, H)`` running offset ``m_t >= state.log_offset`` of this key, or
            None for plain features.

    Returns:
        ``(out, new_state)`` with ``out`` of shape ``(B, H, Dv)``.
    """
    offset = key_log_offset if key_log_offset is not None else k_features.new_zeros(k_features.shape[:2])
    kv_new = k_features.unsqueeze(-1) * values.unsqueeze(-2)
    if state is None:
        kv, normalizer = kv_new, k_features
    else:
        decay = torch.exp((state.log_offset - offset).clamp_max(0.0))
        kv = state.kv * decay[..., None, None] + kv_new
        normalizer = state.normalizer * decay[..., None] + k_features
    numerator = torch.matmul(q_features.unsqueeze(-2), kv).squeeze(-2)
    denominator = (q_features * normalizer).sum(-1)
    return guarded_divide(numerator, denominator, eps), FavorState(kv, normalizer, offset)
