r"""Fused causal FAVOR attention for exponential feature maps (positive / hyperbolic).

The chunked algorithm of :mod:`performers.ops.causal`, written as one autograd Function that
streams over chunks: the forward walks the chunks in order carrying the ``M × (Dv+1)`` state
(kept once per chunk for backward), the backward walks them in reverse carrying the state's
adjoint and recomputing each chunk's features. Every per-chunk tensor is small enough to stay
in cache, no tensor of ``L·M`` elements is allocated, and memory is
``O(L·D + (L/C)·M·D + C·(M + C))`` forward and backward.

Offsets (``m_j``, running maximum of the key log-features) are in units of ``P x̃ - ‖x̃‖²/2``
internally; the returned state uses the units of :func:`performers.ops.features.stabilize_keys`
(which include the map's constant ``c``), so states move freely between the two paths.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from performers.ops.causal import safe_reciprocal
from performers.ops.features import exp_key_log_features, exp_query_features, outer_sum

__all__ = ["fused_causal_exp_attention"]


def _with_ones(v: Tensor) -> Tensor:
    return torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)


class _StreamingCausalExpAttention(torch.autograd.Function):
    """Chunk-streaming causal attention: every per-chunk tensor stays small (cache-resident).

    Forward walks the chunks in order carrying the ``M × (Dv+1)`` state and keeps the state
    *before* each chunk; backward walks them in reverse carrying the state's adjoint,
    recomputing each chunk's features. Nothing of size ``L·M`` is ever allocated.
    """

    @staticmethod
    def forward(ctx, q, k, v, rows, scale, pad, chunk, eps):
        b, h, length, _ = q.shape
        scaled_rows = rows * scale
        scale_sq = scale * scale
        num_chunks = -(-length // chunk)
        e = v.shape[-1] + 1
        m = rows.shape[0]
        states = q.new_empty(b, h, num_chunks, m, e)
        offsets = q.new_empty(b, h, length)
        inverse = q.new_empty(b, h, length, 1)
        out = q.new_empty(b, h, length, v.shape[-1])
        state = q.new_zeros(b, h, m, e)
        state_offset = None
        running = q.new_full((b, h), -math.inf)
        for c in range(num_chunks):
            lo, hi = c * chunk, min((c + 1) * chunk, length)
            pad_c = None if pad is None else pad[:, :, lo:hi]
            log_k = exp_key_log_features(k[:, :, lo:hi], scaled_rows, scale_sq)
            per_position = log_k.amax(dim=-1)
            if pad_c is not None:
                per_position = per_position.masked_fill(pad_c[..., 0], -math.inf)
            run = torch.cummax(torch.cat([running.unsqueeze(-1), per_position], -1), dim=-1).values[..., 1:]
            running = run[..., -1]
            offs = torch.where(torch.isfinite(run), run, torch.zeros_like(run))
            offsets[:, :, lo:hi] = offs
            if state_offset is None:
                state_offset = offs[..., 0]
            states[:, :, c] = state
            k_feat = log_k.sub_(offs.unsqueeze(-1)).exp_()
            if pad_c is not None:
                k_feat.masked_fill_(pad_c, 0.0)
            q_feat = exp_query_features(q[:, :, lo:hi], scaled_rows)
            v_aug = _with_ones(v[:, :, lo:hi])
            within, to_query, to_end, decay = _chunk_factors(offs, state_offset)
            read = torch.matmul(torch.matmul(q_feat, k_feat.transpose(-2, -1)).mul_(within), v_aug)
            read.add_(torch.matmul(q_feat, state).mul_(to_query))
            inv = safe_reciprocal(read[..., -1], eps).unsqueeze(-1)
            inverse[:, :, lo:hi] = inv
            torch.mul(read[..., :-1], inv, out=out[:, :, lo:hi])
            state = torch.addcmul(torch.matmul(k_feat.transpose(-2, -1), v_aug * to_end), state, decay)
            state_offset = offs[..., -1]
        ctx.save_for_backward(q, k, v, rows, offsets, states, inverse, out)
        ctx.pad, ctx.chunk, ctx.scale = pad, chunk, scale
        ctx.mark_non_differentiable(state, state_offset)
        return out, state, state_offset

    @staticmethod
    def backward(ctx, grad_out, _grad_state, _grad_offset):
        q, k, v, rows, offsets, states, inverse, out = ctx.saved_tensors
        pad, chunk, scale = ctx.pad, ctx.chunk, ctx.scale
        length = q.shape[2]
        scaled_rows = rows * scale
        scale_sq = scale * scale
        need_q, need_k, need_v, need_rows = ctx.needs_input_grad[:4]
        grad_q = torch.empty_like(q) if need_q else None
        grad_k = torch.empty_like(k) if need_k else None
        grad_v = torch.empty_like(v) if need_v else None
        grad_rows = torch.zeros_like(rows) if need_rows else None
        adjoint = torch.zeros_like(states[:, :, 0])  # ∂L/∂(state after the chunk)
        for c in range(states.shape[2] - 1, -1, -1):
            lo, hi = c * chunk, min((c + 1) * chunk, length)
            offs = offsets[:, :, lo:hi]
            state = states[:, :, c]
            state_offset = offsets[:, :, 0] if c == 0 else offsets[:, :, lo - 1]
            kb, qb = k[:, :, lo:hi], q[:, :, lo:hi]
            k_feat = exp_key_log_features(kb, scaled_rows, scale_sq).sub_(offs.unsqueeze(-1)).exp_()
            if pad is not None:
                k_feat.masked_fill_(pad[:, :, lo:hi], 0.0)
            q_feat = exp_query_features(qb, scaled_rows)
            v_aug = _with_ones(v[:, :, lo:hi])
            within, to_query, to_end, decay = _chunk_factors(offs, state_offset)
            g = grad_out[:, :, lo:hi]
            inv = inverse[:, :, lo:hi]
            grad_read = torch.cat([g * inv, -(g * out[:, :, lo:hi]).sum(-1, keepdim=True) * inv], dim=-1)
            g_state = grad_read * to_query
            grad_scores = torch.matmul(grad_read, v_aug.transpose(-2, -1)).mul_(within)
            grad_q_feat = torch.matmul(grad_scores, k_feat)
            grad_q_feat.add_(torch.matmul(g_state, state.transpose(-2, -1)))
            scaled_v = v_aug * to_end
            grad_k_feat = torch.matmul(grad_scores.transpose(-2, -1), q_feat)
            grad_k_feat.add_(torch.matmul(scaled_v, adjoint.transpose(-2, -1)))
            if need_v:
                scores = torch.matmul(q_feat, k_feat.transpose(-2, -1)).mul_(within)
                grad_v_aug = torch.matmul(scores.transpose(-2, -1), grad_read)
                grad_v_aug.add_(torch.matmul(k_feat, adjoint).mul_(to_end))
                grad_v[:, :, lo:hi] = grad_v_aug[..., :-1]
            adjoint = torch.addcmul(torch.matmul(q_feat.transpose(-2, -1), g_state), adjoint, decay)
            grad_q_log = grad_q_feat.mul_(q_feat)
            grad_k_log = grad_k_feat.mul_(k_feat)
            if need_q:
                grad_q[:, :, lo:hi] = torch.matmul(grad_q_log, scaled_rows)
            if need_k:
                gk = torch.matmul(grad_k_log, scaled_rows)
                grad_k[:, :, lo:hi] = gk.sub_(grad_k_log.sum(-1, keepdim=True) * kb, alpha=scale_sq)
            if need_rows:
                grad_rows.add_(outer_sum(grad_q_log, qb) + outer_sum(grad_k_log, kb), alpha=scale)
        return grad_q, grad_k, grad_v, grad_rows, None, None, None, None


def _chunk_factors(offs: Tensor, state_offset: Tensor):
    """Rescaling factors of one chunk, all ``≤ 1``: within-chunk (masked), state→query,
    key→chunk end, and the state's decay to the chunk end."""
    c = offs.shape[-1]
    causal_mask = torch.ones(c, c, dtype=torch.bool, device=offs.device).tril()
    within = torch.exp((offs.unsqueeze(-2) - offs.unsqueeze(-1)).clamp_max(0.0)) * causal_mask
    end = offs[..., -1:]
    to_query = torch.exp((state_offset.unsqueeze(-1) - offs).clamp_max(0.0)).unsqueeze(-1)
    to_end = torch.exp((offs - end).clamp_max(0.0)).unsqueeze(-1)
    decay = torch.exp((state_offset.unsqueeze(-1) - end).clamp_max(0.0)).unsqueeze(-1)
    return within, to_query, to_end, decay


def fused_causal_exp_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rows: Tensor,
    *,
    scale: float,
    log_const: float,
    key_padding_mask: Tensor | None = None,
    chunk_size: int = 64,
    eps: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Causal FAVOR attention with features ``exp(P(√s·x) - s‖x‖²/2 - c)``, from an empty state.

    Args:
        q, k: ``(B, H, L, D)``; v: ``(B, H, L, Dv)``.
        rows: ``P``, ``(M', D)``; scale: ``√s``; log_const: ``c`` (only used for the state).
        key_padding_mask: ``(B, L)`` bool, True marks a padded key.
        chunk_size: positions per chunk.
        eps: denominator guard (default: the dtype's smallest normal number).

    Returns:
        ``(out (B, H, L, Dv), kv_aug (B, H, M', Dv+1), log_offset (B, H))``: the output and the
        final state (not differentiable) in :class:`~performers.ops.causal.FavorState` units.
    """
    pad = None if key_padding_mask is None else key_padding_mask[:, None, :, None]
    eps = torch.finfo(q.dtype).tiny if eps is None else eps
    chunk = max(1, min(chunk_size, q.shape[2]))
    out, final, offset = _StreamingCausalExpAttention.apply(q, k, v, rows, scale, pad, chunk, eps)
    return out, final, offset - log_const
