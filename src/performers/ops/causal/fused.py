r"""Fused causal FAVOR attention for exponential feature maps (:class:`~performers.ops.features.ExpForm`).

The chunked algorithm of :mod:`performers.ops.causal.generic`, written as one autograd Function that
streams over *segments* of ``segment_chunks`` chunks (default ``SEGMENT_CHUNKS``): inside a
segment everything is batched
over its chunks (features, masked ``C×C`` blocks, chunk summaries); across segments the
``M × (Dv+1)`` state is carried. The forward keeps the inputs, the per-position offsets, the
state before every chunk (``(L/C)·M·(Dv+1)``) and the masked intra-chunk blocks (``L·C``); the
backward walks the segments in reverse carrying the state's adjoint and recomputes the
features. The state entering the first chunk may be given (a preceding prefix, e.g. an earlier call
or the shards of a sequence before this one, :mod:`performers.distributed`); gradients flow into
it and out of the final state. No tensor of ``L·M`` elements is allocated: memory is
``O(L·(D + C) + (L/C)·M·D + S·M)`` for a segment of ``S`` positions, forward and backward.

Offsets (``m_j``, running maximum of the key log-features) are in units of ``P x̃ - a‖x̃‖²/2``
internally; the returned state uses the units of :func:`performers.ops.features.stabilize_keys`
(which include the map's constant ``c``), so states move freely between the two paths.

Packed rows (``packed=``, :mod:`performers.ops.causal.packed`): the key offsets restart at each
sequence and every factor that would cross a boundary — intra-chunk block, summary, carried
state, a query's read of it — is masked to an exact 0, forward and backward alike (the masks
are constants, so the backward's formulas are unchanged); no loop over sequences.

Second derivatives: a backward run with ``create_graph=True`` differentiates a PyTorch
recomputation instead (the features in the forward's offsets, then the chunked algorithm of
:mod:`performers.ops.causal.generic`; :mod:`performers.ops.double_backward`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from performers.ops.causal.generic import causal_linear_attention
from performers.ops.causal.packed import (
    PackedLayout,
    packed_chunk_masks,
    packed_chunked_reads,
    packed_key_offsets,
)
from performers.ops.checks import check_positive_int
from performers.ops.double_backward import graph_backward, wants_graph
from performers.ops.features import (
    ExpForm,
    exp_log_features,
    exp_log_input_grad,
    exp_query_features,
    outer_sum,
    transposed_product,
)
from performers.ops.numerics import (
    accumulation_dtype,
    chunk_rescale_factors,
    guarded_divide,
    key_offsets,
    safe_reciprocal,
    state_carry_factors,
    with_ones,
)
from performers.ops.state import DEFAULT_CHUNK_SIZE, SEGMENT_CHUNKS, FavorState

__all__ = ["SEGMENT_CHUNKS", "fused_causal_exp_attention"]


def _in_dtype(offsets: Tensor, log: Tensor, exact: bool) -> Tensor:
    """Offsets in the dtype of the log-features they are subtracted from, when that is exact (a
    mixed-dtype in-place op would compute in float32 and copy back). Offsets are maxima of those
    very logs unless an initial state's offset started them (``exact`` False): kept float32."""
    return offsets.to(log.dtype) if exact else offsets


def _split(t: Tensor, chunk: int) -> Tensor:
    b, h, length = t.shape[:3]
    return t.reshape(b, h, length // chunk, chunk, *t.shape[3:])


def _block_factors(
    offs: Tensor, state_offset: Tensor, chunk: int, low: torch.dtype, seq_ext: Tensor | None, lo: int, hi: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(within, to_end, to_query, carry)`` of the chunks of positions ``lo:hi`` (see
    :func:`~performers.ops.numerics.chunk_rescale_factors` and
    :func:`~performers.ops.numerics.state_carry_factors`), the first three in ``low``. A packed
    row (``seq_ext``: sequence ids, then the sentinel) masks every factor that would cross a
    boundary (:func:`~performers.ops.causal.packed.packed_chunk_masks`): the same constants
    forward and backward, so the backward below needs no other change."""
    pairs = None
    if seq_ext is not None:
        # The causal pairs of one sequence mask `within` (the largest factor) as it is made.
        pairs, at_end, at_query, reach = packed_chunk_masks(
            seq_ext[lo:hi].view(-1, chunk), seq_ext[hi : hi + 1]
        )
    within, to_end, _, to_query = chunk_rescale_factors(_split(offs, chunk), state_offset, pairs)
    carry = state_carry_factors(offs[:, :, chunk - 1 :: chunk], state_offset)
    if seq_ext is not None:
        # masked_fill_, not a product with the bool masks (which would first copy them to floats).
        to_end.masked_fill_(~at_end, 0.0)
        to_query.masked_fill_(~at_query, 0.0)
        carry.masked_fill_(~reach, 0.0)
    return within.to(low), to_end.to(low), to_query.to(low), carry


def _packed_block_offsets(
    log_k: Tensor, pad: Tensor | None, seq_ext: Tensor, lo: int, hi: int, running: Tensor
) -> tuple[Tensor, Tensor]:
    """The key offsets of positions ``lo:hi`` of a packed row and the raw running maximum after
    them: running maxima restarting at each sequence; the maximum carried from before ``lo``
    (``running``) continues only the sequence that runs across ``lo``."""
    per_position = log_k.detach().amax(dim=-1)
    if pad is not None:
        per_position = per_position.masked_fill(pad[..., 0], -math.inf)
    seq = seq_ext[lo:hi]
    before = seq_ext[lo - 1] if lo else seq.new_tensor(-1)
    floor = torch.where(seq == before, running.unsqueeze(-1), -math.inf)
    offsets, raw = packed_key_offsets(per_position, seq, floor)
    return offsets, raw[..., -1]


class _SegmentedCausalExpAttention(torch.autograd.Function):
    """Causal attention over segments of ``n`` chunks: vectorized inside a segment, streamed
    across segments. Per-segment tensors are ``O(n·C·(M + C))``; the state before every chunk
    is kept for backward (``(L/C)·M·(Dv+1)``); features are recomputed in backward."""

    @staticmethod
    def forward(ctx, q, k, v, rows, initial, initial_offset, scale, norm, pad, chunk, segment, eps, seq_ext):
        # The inputs as given (the padded copies below are made without a graph): backward pads
        # again, and a differentiable recomputation needs them connected.
        inputs = (q, k, v, rows, initial)
        length = q.shape[2]
        extra = (-length) % chunk
        if extra:
            # Whole chunks only: the tail keys are marked as padding, and later positions
            # never influence earlier ones, so the real outputs are unchanged.
            q, k, v = (F.pad(t, (0, 0, 0, extra)) for t in (q, k, v))
            tail = torch.ones(q.shape[0], 1, extra, 1, dtype=torch.bool, device=q.device)
            pad = torch.cat(
                [pad if pad is not None else tail.new_zeros(q.shape[0], 1, length, 1), tail], dim=2
            )
        b, h, padded, _ = q.shape
        # float16/bfloat16 inputs: products in their dtype (`low`), while offsets, the running
        # state, the normalizers and every sum over chunks stay in float32 (`acc`).
        acc = accumulation_dtype(q.dtype)
        # The map of x̃ = √s·x is computed on x with rows √s·P and norm weight a·s.
        scaled_rows = rows * scale
        scaled_norm = norm * scale * scale
        m, e = rows.shape[0], v.shape[-1] + 1
        span = chunk * segment
        num_segments = -(-padded // span)
        # One contiguous block of chunk states per segment, so a segment's slice is a plain
        # (B, H, n, M, E) tensor that bmm reads without a copy.
        states = q.new_empty(num_segments, b, h, segment, m, e, dtype=acc)
        # The intra-chunk blocks (L·C values) are kept: cheaper than recomputing them.
        keep = any(ctx.needs_input_grad[:4])
        blocks = q.new_empty(b, h, padded // chunk, chunk, chunk) if keep else None
        offsets = q.new_empty(b, h, padded, dtype=acc)
        inverse = q.new_empty(b, h, padded, 1, dtype=acc)
        out = q.new_empty(b, h, padded, e - 1)
        # The state entering the first chunk, and the offset it is expressed in (that offset
        # starts the running maximum, so every later key is in units >= it).
        state = q.new_zeros(b, h, m, e, dtype=acc) if initial is None else initial.to(acc)
        if initial_offset is None:
            running = q.new_full((b, h), -math.inf, dtype=acc)
        else:
            running = initial_offset.to(acc)
        state_offset = initial_offset
        for lo in range(0, padded, span):
            hi = min(lo + span, padded)
            pad_s = None if pad is None else pad[:, :, lo:hi]
            log_k = exp_log_features(k[:, :, lo:hi], scaled_rows, scaled_norm)
            if seq_ext is None:
                offs, running = key_offsets(
                    log_k, causal=True, pad=None if pad_s is None else pad_s[..., 0], start=running
                )
            else:
                offs, running = _packed_block_offsets(log_k, pad_s, seq_ext, lo, hi, running)
            offs = offs.to(acc)
            offsets[:, :, lo:hi] = offs
            if state_offset is None:
                state_offset = offs[..., 0]
            k_feat = log_k.sub_(_in_dtype(offs, log_k, initial_offset is None).unsqueeze(-1)).exp_()
            if pad_s is not None:
                k_feat.masked_fill_(pad_s, 0.0)
            q_feat = exp_query_features(q[:, :, lo:hi], scaled_rows)
            v_aug = with_ones(v[:, :, lo:hi])
            within, to_end, to_query, carry = _block_factors(
                offs, state_offset, chunk, q.dtype, seq_ext, lo, hi
            )
            qc, kc, vc = _split(q_feat, chunk), _split(k_feat, chunk), _split(v_aug, chunk)
            scores = torch.matmul(qc, kc.transpose(-2, -1)).mul_(within)
            if keep:
                blocks[:, :, lo // chunk : hi // chunk] = scores
            read = torch.matmul(scores, vc).to(acc)
            del scores
            summaries = transposed_product(kc, vc * to_end).to(acc)
            n = summaries.shape[2]
            # The states entering each chunk and leaving the last, as one product (see
            # state_carry_factors): sources are the incoming state and the chunk summaries.
            carried = torch.matmul(carry[..., 1:], summaries.flatten(-2))
            carried.addcmul_(carry[..., :1], state.flatten(-2).unsqueeze(2))
            carried = carried.view(b, h, n + 1, m, e)
            prefix = states[lo // span, :, :, :n]
            prefix.copy_(carried[:, :, :n])
            state = carried[:, :, n]
            read.add_(torch.matmul(qc, prefix.to(q.dtype)).mul_(to_query))
            read = read.reshape(b, h, hi - lo, e)
            inv = safe_reciprocal(read[..., -1], eps).unsqueeze(-1)
            inverse[:, :, lo:hi] = inv
            torch.mul(read[..., :-1], inv, out=out[:, :, lo:hi])
            state_offset = offs[..., -1]
        ctx.save_for_backward(*inputs, offsets, states, inverse, out, blocks, initial_offset)
        ctx.pad, ctx.chunk, ctx.segment, ctx.length = pad, chunk, segment, length
        ctx.scale, ctx.scaled_norm, ctx.eps, ctx.seq_ext = scale, scaled_norm, eps, seq_ext
        ctx.mark_non_differentiable(state_offset)
        return out[:, :, :length], state, state_offset

    @staticmethod
    def backward(ctx, grad_out, grad_state, _grad_offset):
        q, k, v, rows, initial, offsets, states, inverse, out, blocks, initial_offset = ctx.saved_tensors
        pad, chunk, segment, length = ctx.pad, ctx.chunk, ctx.segment, ctx.length
        scale, scaled_norm = ctx.scale, ctx.scaled_norm
        if wants_graph():  # create_graph=True: a differentiable recomputation (double_backward)

            def recompute(q, k, v, rows, initial) -> tuple[Tensor, Tensor]:
                real_pad = None if pad is None else pad[:, :, :length]
                return _causal_graph(
                    q, k, v, rows, initial, initial_offset, offsets[:, :, :length], real_pad,
                    scale, scaled_norm, chunk, ctx.eps, ctx.seq_ext,
                )  # fmt: skip

            inputs = (q, k, v, rows, initial)
            grads = graph_backward(inputs, ctx.needs_input_grad[:5], recompute, (grad_out, grad_state))
            return (*grads, *(None,) * 8)
        padded = out.shape[2]
        if padded != length:
            grad_out = F.pad(grad_out, (0, 0, 0, padded - length))
            q, k, v = (F.pad(t, (0, 0, 0, padded - length)) for t in (q, k, v))
        b, h = q.shape[:2]
        scaled_rows = rows * scale
        acc, low = accumulation_dtype(q.dtype), q.dtype
        need_q, need_k, need_v, need_rows = ctx.needs_input_grad[:4]
        grad_q = q.new_empty(q.shape) if need_q else None
        grad_k = k.new_empty(k.shape) if need_k else None
        grad_v = v.new_empty(v.shape) if need_v else None
        grad_rows = torch.zeros_like(rows, dtype=acc) if need_rows else None
        # ∂L/∂(state after the current segment); after the loop, ∂L/∂(initial state).
        if grad_state is None:
            adjoint = torch.zeros_like(states[0, :, :, 0])
        else:
            adjoint = grad_state.to(acc, copy=True)
        span = chunk * segment
        for lo in reversed(range(0, padded, span)):
            hi = min(lo + span, padded)
            offs = offsets[:, :, lo:hi]
            if lo > 0:
                state_offset = offsets[:, :, lo - 1]
            else:
                state_offset = offsets[:, :, 0] if initial_offset is None else initial_offset
            kb, qb = k[:, :, lo:hi], q[:, :, lo:hi]
            k_feat = exp_log_features(kb, scaled_rows, scaled_norm)
            k_feat.sub_(_in_dtype(offs, k_feat, initial_offset is None).unsqueeze(-1)).exp_()
            if pad is not None:
                k_feat.masked_fill_(pad[:, :, lo:hi], 0.0)
            q_feat = exp_query_features(qb, scaled_rows)
            v_aug = with_ones(v[:, :, lo:hi])
            within, to_end, to_query, carry = _block_factors(
                offs, state_offset, chunk, low, ctx.seq_ext, lo, hi
            )
            g = grad_out[:, :, lo:hi]
            inv = inverse[:, :, lo:hi]
            # out = num/den: ∂num = g/den, ∂den = -Σ g·out/den (0 where the guard was active).
            grad_read = torch.cat([g * inv, -(g * out[:, :, lo:hi]).sum(-1, keepdim=True) * inv], dim=-1)
            qc, kc, vc, gc = (_split(t, chunk) for t in (q_feat, k_feat, v_aug, grad_read.to(low)))
            prefix = states[lo // span, :, :, : (hi - lo) // chunk].to(low)
            grad_scores = torch.matmul(gc, vc.transpose(-2, -1)).mul_(within)
            grad_qc = torch.matmul(grad_scores, kc)
            grad_kc = torch.matmul(grad_scores.transpose(-2, -1), qc)
            del grad_scores
            if need_v:
                grad_vc = torch.matmul(blocks[:, :, lo // chunk : hi // chunk].transpose(-2, -1), gc)
            g_state = gc * to_query
            grad_qc.add_(torch.matmul(g_state, prefix.transpose(-2, -1)))
            grad_prefix = transposed_product(qc, g_state)
            # The adjoint of the forward's one product: rows 1.. are the summaries' gradients,
            # row 0 the incoming state's (carried on to the previous segment).
            n = grad_prefix.shape[2]
            adjoints = torch.cat([grad_prefix.to(acc).flatten(-2), adjoint.flatten(-2).unsqueeze(2)], dim=2)
            carried = torch.matmul(carry.transpose(-2, -1), adjoints).view(b, h, n + 1, *adjoint.shape[-2:])
            adjoint = carried[:, :, 0]
            grad_summaries = carried[:, :, 1:].to(low)
            scaled_v = vc * to_end
            grad_kc.add_(torch.matmul(scaled_v, grad_summaries.transpose(-2, -1)))
            if need_v:
                grad_vc.add_(torch.matmul(kc, grad_summaries).mul_(to_end))
                grad_v[:, :, lo:hi] = grad_vc.reshape(b, h, hi - lo, -1)[..., :-1]
            grad_q_log = grad_qc.reshape(q_feat.shape).mul_(q_feat)
            grad_k_log = grad_kc.reshape(k_feat.shape).mul_(k_feat)
            if need_q:
                # Query features are row-stabilized: no norm term (it cancels).
                grad_q[:, :, lo:hi] = exp_log_input_grad(grad_q_log, qb, scaled_rows)
            if need_k:
                grad_k[:, :, lo:hi] = exp_log_input_grad(grad_k_log, kb, scaled_rows, scaled_norm)
            if need_rows:
                grad_rows.add_(outer_sum(grad_q_log, qb) + outer_sum(grad_k_log, kb), alpha=scale)
        if grad_rows is not None:
            grad_rows = grad_rows.to(rows.dtype)
        return (
            None if grad_q is None else grad_q[:, :, :length],
            None if grad_k is None else grad_k[:, :, :length],
            None if grad_v is None else grad_v[:, :, :length],
            grad_rows,
            adjoint if ctx.needs_input_grad[4] else None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        )


def _causal_graph(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rows: Tensor,
    initial: Tensor | None,
    initial_offset: Tensor | None,
    offsets: Tensor,
    pad: Tensor | None,
    scale: float,
    scaled_norm: float,
    chunk: int,
    eps: float,
    seq_ext: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """:class:`_SegmentedCausalExpAttention`'s ``(out, final state)`` in differentiable
    operations: features materialized in the forward's (detached) offsets, then the chunked
    algorithm of :mod:`performers.ops.causal.generic`."""
    acc = accumulation_dtype(q.dtype)
    q, k, v, rows = (t.to(acc) for t in (q, k, v, rows))
    scaled_rows = rows * scale
    log_q = exp_log_features(q, scaled_rows)
    q_features = torch.exp(log_q - log_q.detach().amax(dim=-1, keepdim=True))
    log_k = exp_log_features(k, scaled_rows, scaled_norm)
    if pad is not None:  # -inf before exp: a padded key is an exact 0 with a zero gradient
        log_k = log_k.masked_fill(pad, -math.inf)
    k_features = torch.exp(log_k - offsets.unsqueeze(-1))
    if seq_ext is not None:  # a packed row (from empty states): the masked chunked algorithm
        length = q.shape[2]
        tail = seq_ext.shape[0] - 1 - length
        padded = [F.pad(t, (0, 0, 0, tail)) for t in (q_features, k_features, with_ones(v))]
        reads = packed_chunked_reads(*padded, F.pad(offsets, (0, tail)), seq_ext, chunk)[:, :, :length]
        empty = reads.new_zeros(*reads.shape[:2], k_features.shape[-1], reads.shape[-1]).detach()
        return guarded_divide(reads[..., :-1], reads[..., -1], eps), empty
    state = None
    if initial is not None:
        state = FavorState(initial[..., :-1], initial[..., -1], initial_offset)
    out, final = causal_linear_attention(
        q_features, k_features, v, key_log_offsets=offsets, chunk_size=chunk, initial_state=state,
        return_state=True, eps=eps,
    )  # fmt: skip
    return out, torch.cat([final.kv, final.normalizer.unsqueeze(-1)], dim=-1)


def fused_causal_exp_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    form: ExpForm,
    *,
    scale: float,
    key_padding_mask: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    segment_chunks: int = SEGMENT_CHUNKS,
    eps: float | None = None,
    initial_state: Tensor | None = None,
    initial_offset: Tensor | None = None,
    packed: PackedLayout | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Causal FAVOR attention with features ``exp(P(√s·x) - a·s‖x‖²/2 - c)``.

    Args:
        q, k: ``(B, H, L, D)``; v: ``(B, H, L, Dv)``.
        form: the map: ``P`` ``(M', D)`` (differentiable), ``a``, and ``c`` (only used for the
            offsets of the states).
        scale: ``√s``, the factor applied to ``q`` and ``k``.
        key_padding_mask: ``(B, L)`` bool, True marks a padded key.
        chunk_size: positions per chunk.
        segment_chunks: chunks per segment (the unit the Python loop streams over).
        eps: denominator guard (default: the dtype's smallest normal number).
        initial_state: ``(B, H, M', Dv+1)``, the state of a preceding prefix (``[kv, normalizer]``,
            differentiable), or None for an empty one; initial_offset: its ``(B, H)`` log offset
            (:class:`~performers.ops.state.FavorState` units), given with it.
        packed: the sequences of a packed row (``B = 1``; :mod:`performers.ops.causal.packed`):
            attention restarts at each of them, from empty states (no ``initial_state`` or
            ``key_padding_mask``); the returned final state is then meaningless (empty).

    Returns:
        ``(out (B, H, L, Dv), kv_aug (B, H, M', Dv+1), log_offset (B, H))``: the output and the
        final state (differentiable) in :class:`~performers.ops.state.FavorState` units.
    """
    check_positive_int("chunk_size", chunk_size)
    check_positive_int("segment_chunks", segment_chunks)
    if (initial_state is None) != (initial_offset is None):
        raise ValueError("initial_state and initial_offset are given together or not at all")
    pad = None if key_padding_mask is None else key_padding_mask[:, None, :, None]
    eps = torch.finfo(q.dtype).tiny if eps is None else eps
    chunk = max(1, min(chunk_size, q.shape[2]))
    seq_ext = None
    if packed is not None:
        if initial_state is not None or key_padding_mask is not None:
            raise ValueError("a packed row runs from empty states, without key_padding_mask")
        seq_ext = packed.padded_seq(-(-q.shape[2] // chunk) * chunk + 1)
    # Offsets inside the Function leave out the map's constant c (FavorState units include it).
    internal_offset = None if initial_offset is None else initial_offset.detach() + form.log_const
    out, final, offset = _SegmentedCausalExpAttention.apply(
        q,
        k,
        v,
        form.rows,
        initial_state,
        internal_offset,
        scale,
        form.norm,
        pad,
        chunk,
        segment_chunks,
        eps,
        seq_ext,
    )
    return out, final, offset - form.log_const
