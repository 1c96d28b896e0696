r"""Fused causal FAVOR attention for exponential feature maps (positive / hyperbolic).

The same chunked algorithm as :mod:`performers.ops.causal`, written as one autograd Function:
the forward keeps only the inputs, the per-position key offsets, one ``M × (Dv+1)`` state per
chunk and the output; the backward recomputes the features and the intra-chunk blocks and
applies the chain rule by hand, in place where it can. This halves the tensors of
``(B, H, L, M)`` size alive at once and removes most of the elementwise passes autograd would
make over them.

Offsets (``m_j``, running maximum of the key log-features) are in units of ``P x̃ - ‖x̃‖²/2``
internally; the returned state uses the units of :func:`performers.ops.features.stabilize_keys`
(which include the map's constant ``c``), so states move freely between the two paths.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from performers.ops.causal import decayed_prefix_scan, safe_reciprocal

__all__ = ["fused_causal_exp_attention"]


def _query_features(q: Tensor, scaled_rows: Tensor) -> Tensor:
    log = torch.matmul(q, scaled_rows.transpose(-2, -1))
    return log.sub_(log.amax(dim=-1, keepdim=True)).exp_()


def _key_log_features(k: Tensor, scaled_rows: Tensor, scale_sq: float) -> Tensor:
    log = torch.matmul(k, scaled_rows.transpose(-2, -1))
    return log.sub_((0.5 * scale_sq) * (k * k).sum(-1, keepdim=True))


def _with_ones(v: Tensor) -> Tensor:
    return torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)


def _chunk(t: Tensor, chunk: int) -> Tensor:
    b, h, length = t.shape[:3]
    return t.reshape(b, h, length // chunk, chunk, *t.shape[3:])


def _rescales(offsets: Tensor, chunk: int, start_offset: Tensor):
    """Factors of the chunked algorithm, all ``≤ 1`` (see :mod:`performers.ops.causal`)."""
    oc = _chunk(offsets, chunk)  # (B, H, N, C)
    c = oc.shape[-1]
    causal_mask = torch.ones(c, c, dtype=torch.bool, device=offsets.device).tril()
    within = torch.exp((oc.unsqueeze(-2) - oc.unsqueeze(-1)).clamp_max(0.0)) * causal_mask
    chunk_end = oc[..., -1]
    before = torch.cat([start_offset.unsqueeze(-1), chunk_end[..., :-1]], dim=-1)
    to_end = torch.exp((oc - chunk_end.unsqueeze(-1)).clamp_max(0.0)).unsqueeze(-1)
    decay = torch.exp((before - chunk_end).clamp_max(0.0))
    to_query = torch.exp((before.unsqueeze(-1) - oc).clamp_max(0.0)).unsqueeze(-1)
    return within, to_end, decay, to_query, chunk_end


class _FusedCausalExpAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, rows, scale, pad, chunk, eps):
        length = q.shape[2]
        extra = (-length) % chunk
        if extra:
            # Pad to whole chunks with keys marked as padding: later positions never
            # influence earlier ones, so the real outputs are unchanged.
            q, k, v = (F.pad(t, (0, 0, 0, extra)) for t in (q, k, v))
            tail = torch.ones(q.shape[0], 1, extra, 1, dtype=torch.bool, device=q.device)
            pad = torch.cat(
                [pad if pad is not None else tail.new_zeros(q.shape[0], 1, length, 1), tail], dim=2
            )
        scaled_rows = rows * scale
        scale_sq = scale * scale

        log_k = _key_log_features(k, scaled_rows, scale_sq)
        per_position = log_k.amax(dim=-1)
        if pad is not None:
            per_position = per_position.masked_fill(pad[..., 0], -math.inf)
        offsets = torch.cummax(per_position, dim=-1).values
        offsets = torch.where(torch.isfinite(offsets), offsets, torch.zeros_like(offsets))
        k_features = log_k.sub_(offsets.unsqueeze(-1)).exp_()
        if pad is not None:
            k_features.masked_fill_(pad, 0.0)
        q_features = _query_features(q, scaled_rows)
        v_aug = _with_ones(v)

        within, to_end, decay, to_query, chunk_end = _rescales(offsets, chunk, offsets[..., 0])
        qc, kc, vc = _chunk(q_features, chunk), _chunk(k_features, chunk), _chunk(v_aug, chunk)
        scores = torch.matmul(qc, kc.transpose(-2, -1)).mul_(within)
        out_aug = torch.matmul(scores, vc)
        del scores
        summaries = torch.matmul(kc.transpose(-2, -1), vc * to_end)
        state = summaries.new_zeros(summaries.shape[:2] + summaries.shape[3:])
        prefix, final = decayed_prefix_scan(summaries, decay, state)
        del summaries
        out_aug.add_(torch.matmul(qc, prefix).mul_(to_query))
        out_aug = out_aug.reshape(v_aug.shape)
        inverse = safe_reciprocal(out_aug[..., -1], eps).unsqueeze(-1)
        out = out_aug[..., :-1] * inverse

        ctx.save_for_backward(q, k, v, rows, offsets, prefix, inverse, out)
        ctx.pad, ctx.chunk, ctx.scale, ctx.length = pad, chunk, scale, length
        ctx.mark_non_differentiable(final, chunk_end)
        return out[:, :, :length], final, chunk_end[..., -1]

    @staticmethod
    def backward(ctx, grad_out, _grad_final, _grad_offset):
        q, k, v, rows, offsets, prefix, inverse, out = ctx.saved_tensors
        pad, chunk, scale, length = ctx.pad, ctx.chunk, ctx.scale, ctx.length
        padded = q.shape[2]
        if padded != length:
            grad_out = F.pad(grad_out, (0, 0, 0, padded - length))
        scaled_rows = rows * scale
        scale_sq = scale * scale

        q_features = _query_features(q, scaled_rows)
        k_features = _key_log_features(k, scaled_rows, scale_sq).sub_(offsets.unsqueeze(-1)).exp_()
        if pad is not None:
            k_features.masked_fill_(pad, 0.0)
        v_aug = _with_ones(v)
        within, to_end, decay, to_query, _ = _rescales(offsets, chunk, offsets[..., 0])
        # out = num/den: ∂num = g/den, ∂den = -Σ g·out/den (0 where the guard was active).
        grad_aug = torch.cat([grad_out * inverse, -(grad_out * out).sum(-1, keepdim=True) * inverse], dim=-1)

        qc, kc, vc, gc = (_chunk(t, chunk) for t in (q_features, k_features, v_aug, grad_aug))
        # Intra-chunk block A = (Q'K'ᵀ ⊙ within); out += A [V 1].
        grad_scores = torch.matmul(gc, vc.transpose(-2, -1)).mul_(within)
        grad_q_features = torch.matmul(grad_scores, kc)
        grad_k_features = torch.matmul(grad_scores.transpose(-2, -1), qc)
        del grad_scores
        scores = torch.matmul(qc, kc.transpose(-2, -1)).mul_(within)
        grad_v_aug = torch.matmul(scores.transpose(-2, -1), gc)
        del scores
        # Inter-chunk: out += (Q' P_c) ⊙ to_query.
        g_query = gc * to_query
        grad_q_features.add_(torch.matmul(g_query, prefix.transpose(-2, -1)))
        grad_prefix = torch.matmul(qc.transpose(-2, -1), g_query)
        del g_query
        # P_{c+1} = decay_c P_c + X_c, with X_c = K'_cᵀ([V 1] ⊙ to_end): reverse scan.
        grad_summaries = torch.empty_like(grad_prefix)
        adjoint = torch.zeros_like(grad_prefix[:, :, 0])
        for c in range(grad_prefix.shape[2] - 1, -1, -1):
            grad_summaries[:, :, c] = adjoint
            adjoint = torch.addcmul(grad_prefix[:, :, c], adjoint, decay[:, :, c, None, None])
        del grad_prefix
        scaled_v = vc * to_end
        grad_k_features.add_(torch.matmul(scaled_v, grad_summaries.transpose(-2, -1)))
        grad_v_aug.add_(torch.matmul(kc, grad_summaries).mul_(to_end))
        del grad_summaries, scaled_v

        grad_q_log = grad_q_features.reshape(q_features.shape).mul_(q_features)
        grad_k_log = grad_k_features.reshape(k_features.shape).mul_(k_features)
        grad_q = grad_k = grad_v = grad_rows = None
        if ctx.needs_input_grad[0]:
            grad_q = torch.matmul(grad_q_log, scaled_rows)[:, :, :length]
        if ctx.needs_input_grad[1]:
            grad_k = torch.matmul(grad_k_log, scaled_rows)
            grad_k.sub_(grad_k_log.sum(-1, keepdim=True) * k, alpha=scale_sq)
            grad_k = grad_k[:, :, :length]
        if ctx.needs_input_grad[2]:
            grad_v = grad_v_aug.reshape(v_aug.shape)[..., :-1][:, :, :length]
        if ctx.needs_input_grad[3]:
            flat = lambda t: t.reshape(-1, t.shape[-1])
            grad_rows = (flat(grad_q_log).T @ flat(q) + flat(grad_k_log).T @ flat(k)) * scale
        return grad_q, grad_k, grad_v, grad_rows, None, None, None, None


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
    out, final, offset = _FusedCausalExpAttention.apply(q, k, v, rows, scale, pad, chunk, eps)
    return out, final, offset - log_const
