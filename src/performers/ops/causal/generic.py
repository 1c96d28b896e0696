r"""Generic causal (unidirectional) linear attention: chunked prefix sums, differentiated by autograd.

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

Serves every kernel and every state (``initial_state``, a returned state that gradients flow
through); the exponential kernels otherwise take :mod:`performers.ops.causal.fused`. The
one-position step is :mod:`performers.ops.causal.recurrent`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from performers.ops.numerics import chunk_rescale_factors, guarded_divide, with_ones
from performers.ops.state import DEFAULT_CHUNK_SIZE, FavorState

__all__ = ["causal_linear_attention", "decayed_prefix_scan"]


class _DecayedPrefixScan(torch.autograd.Function):
    """``P_0 = init``, ``P_{c+1} = γ_c P_c + X_c``; returns all ``P_c`` (c < N) and ``P_N``.

    Written as a Function so that the per-chunk Python loop writes into one preallocated
    buffer forward and backward; indexing a tensor in an autograd loop would make every step's
    backward allocate (and zero) a full-size gradient, ``O(N²)`` work. Its backward is the same
    scan run backwards in time, so with ``create_graph=True`` it runs as this Function again
    (differentiable at every order).
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
        if torch.is_grad_enabled():
            # create_graph=True: the adjoint recursion is this scan run backwards in time
            # (A_N = ∂P_N, A_c = γ_c A_{c+1} + ∂P_c; ∂X_c = A_{c+1}, ∂init = A_0), so the
            # Function itself gives it a graph, O(N) at every order.
            if grad_prefix is None:
                grad_prefix = grad_final.new_zeros(*decay.shape, *grad_final.shape[-2:])
            if grad_final is None:
                grad_final = grad_prefix.new_zeros(grad_prefix[:, :, 0].shape)
            reversed_prefix, grad_init = _DecayedPrefixScan.apply(
                grad_prefix.flip(2), decay.flip(2), grad_final
            )
            return reversed_prefix.flip(2), None, grad_init
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
        eps: denominator guard, see :func:`performers.ops.numerics.guarded_divide`.

    Returns:
        ``(B, H, L, Dv)`` outputs, and the final state if ``return_state``.
    """
    b, h, length, _ = k_features.shape
    values_aug = with_ones(values)
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
