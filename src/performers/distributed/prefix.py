r"""The causal exchange: each shard's state of its own keys → the state of every key before it.

Shard ``s`` summarizes its keys in ``S_s = Σ_j φ(k_j)[v_j, 1]ᵀ`` (``M' × (Dv+1)``) in units of
``exp(e_s)``, ``e_s`` the largest key log-feature it has seen (``-inf``: none). One all-gather
of ``(S_s, e_s)`` gives every process all of them; shard ``r`` then forms the exclusive prefix

    ``P_r = Σ_{s<r} S_s·exp(e_s − p_r)`` (plus an initial state), ``p_r = max_{s<r} e_s``,

from the shards before it only (so no output of shard ``r`` depends on a later token, bit for
bit), and, when asked, the state of the whole sequence ``T`` (identical on every process). The
factors are detached stabilizers ``≤ 1``. Backward is the mirror image: one all-gather of the
gradients of every ``P_r`` (and ``T``), from which shard ``s`` sums what reaches ``S_s`` —
``Σ_{r>s} exp(e_s − p_r)·∂P_r`` — the reverse prefix. With ``create_graph=True`` that gather is
differentiable (its adjoint an all-reduce), so second derivatives cross shards too.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

from performers.distributed.collectives import _all_gather, gather_for_backward

__all__ = ["exclusive_prefix", "offset_weights"]


def offset_weights(offsets: Tensor, target: Tensor) -> Tensor:
    """``exp(offsets − target)``, clamped at 1, with ``exp(-inf − ·) = 0`` (an empty summary
    weighs nothing): moves summaries in units of ``exp(offsets)`` to units of ``exp(target)``.

    ``offsets`` and ``target`` broadcast together; ``target`` is ``>=`` every finite offset
    it meets, or ``-inf``.
    """
    safe_target = torch.where(torch.isfinite(target), target, torch.zeros_like(target))
    weights = torch.exp((offsets - safe_target).clamp_max(0.0))
    return torch.where(torch.isfinite(offsets), weights, torch.zeros_like(weights))


def _combine(states: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
    """``Σ_s states_s·exp(offsets_s − p)`` and ``p = max_s offsets_s``: ``(N, B, H, M, E)``, ``(N, B, H)``."""
    if states.shape[0] == 0:
        return states.new_zeros(states.shape[1:]), offsets.new_full(offsets.shape[1:], -math.inf)
    target = offsets.amax(dim=0)
    weights = offset_weights(offsets, target)
    return torch.einsum("nbh,nbhme->bhme", weights, states), target


class _ExclusivePrefix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, state, initial, offset, initial_offset, group, with_total):
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        b, h, m, e = state.shape
        # One all-gather of [S_s, e_s] (the offset rides along as one more column).
        packed = torch.cat([state.reshape(b, h, m * e), offset.to(state.dtype).reshape(b, h, 1)], dim=-1)
        gathered = _all_gather(packed, group, backward=False)  # (W, B, H, M·E + 1)
        states = gathered[..., :-1].reshape(world, b, h, m, e)
        offsets = gathered[..., -1]
        if initial is not None:
            # The initial state precedes shard 0: it is one more summary at the front.
            states = torch.cat([initial.unsqueeze(0), states], dim=0)
            offsets = torch.cat([initial_offset.unsqueeze(0).to(offsets.dtype), offsets], dim=0)
        first = 0 if initial is None else 1
        prefix, prefix_offset = _combine(states[: first + rank], offsets[: first + rank])
        total = total_offset = None
        if with_total:
            total, total_offset = _combine(states, offsets)
        ctx.save_for_backward(offsets, prefix_offset, total_offset if with_total else prefix_offset)
        ctx.group, ctx.rank, ctx.world, ctx.first, ctx.with_total = group, rank, world, first, with_total
        ctx.state_shape = (m, e)
        ctx.mark_non_differentiable(prefix_offset)
        if with_total:
            ctx.mark_non_differentiable(total_offset)
            return prefix, prefix_offset, total, total_offset
        return prefix, prefix_offset

    @staticmethod
    def backward(ctx, grad_prefix, _grad_prefix_offset, grad_total=None, _grad_total_offset=None):
        offsets, prefix_offset, total_offset = ctx.saved_tensors
        rank, world, first = ctx.rank, ctx.world, ctx.first
        b, h = prefix_offset.shape
        if grad_prefix is None:
            grad_prefix = offsets.new_zeros(b, h, *ctx.state_shape)
        parts = [grad_prefix]
        if ctx.with_total:
            parts.append(grad_total if grad_total is not None else torch.zeros_like(grad_prefix))
        local = torch.stack(parts, dim=0)  # (1 or 2, B, H, M, E)
        # (W, 1 or 2, B, H, M, E); a differentiable gather with create_graph=True: the prefix is
        # linear in the states (the weights are detached stabilizers), so its second derivative
        # is this backward's dependence on the gradients, which the gather then carries.
        gathered = gather_for_backward(local, ctx.group)
        # Every shard's prefix offset, recomputed from the offsets (no second exchange).
        prefix_offsets = torch.stack(
            [_combine_offsets(offsets[: first + r]) for r in range(world)], dim=0
        )  # (W, B, H)
        # ∂S_s = Σ_{r>s} exp(e_s − p_r) ∂P_r (+ exp(e_s − p_T) Σ_r ∂T_r)
        own = offsets[first + rank]
        later = torch.arange(world, device=own.device) > rank
        weights = offset_weights(own.expand(world, b, h), prefix_offsets) * later[:, None, None].to(own.dtype)
        grad_state = torch.einsum("rbh,rbhme->bhme", weights, gathered[:, 0])
        if ctx.with_total:
            to_total = offset_weights(own, total_offset)[..., None, None]
            grad_state = grad_state + to_total * gathered[:, 1].sum(0)
        grad_initial = None
        if first:
            init = offsets[0]
            grad_initial = offset_weights(init, prefix_offset)[..., None, None] * grad_prefix
            if ctx.with_total:
                grad_initial = grad_initial + offset_weights(init, total_offset)[..., None, None] * local[1]
        return grad_state, grad_initial, None, None, None, None


def _combine_offsets(offsets: Tensor) -> Tensor:
    if offsets.shape[0] == 0:
        return offsets.new_full(offsets.shape[1:], -math.inf)
    return offsets.amax(dim=0)


def exclusive_prefix(
    state: Tensor,
    offset: Tensor,
    *,
    group=None,
    initial: Tensor | None = None,
    initial_offset: Tensor | None = None,
    with_total: bool = False,
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor, Tensor]:
    """The state before this shard (and optionally after the whole sequence), see the module doc.

    Args:
        state: ``(B, H, M', E)``, this shard's ``S`` in units of ``exp(offset)``; differentiable.
        offset: ``(B, H)``, its raw log offset (``-inf``: the shard has no key).
        group: the process group; shards are in group-rank order.
        initial, initial_offset: a state preceding shard 0 (the same on every process), or None.
        with_total: also return the state after the last shard.

    Returns:
        ``(prefix (B, H, M', E), prefix_offset (B, H))`` and, with ``with_total``,
        ``(total, total_offset)``; offsets raw (``-inf`` where there is no key).
    """
    if (initial is None) != (initial_offset is None):
        raise ValueError("initial and initial_offset are given together or not at all")
    return _ExclusivePrefix.apply(
        state, initial, offset.detach(), None if initial_offset is None else initial_offset.detach(),
        group, with_total,
    )  # fmt: skip
