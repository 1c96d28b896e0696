r"""Packed bidirectional FAVOR attention for exponential feature maps (``cu_seqlens``), fused.

A packed row ``(1, H, T, D)`` holds ``N`` sequences back to back; each attends within itself,
with its own key stabilizer. Two autograd Functions take the whole row, as the unpacked fused
path (:mod:`performers.ops.bidirectional.fused`) takes one sequence:

* :class:`_PackedExpKeySummary`: keys and values → one summary per sequence, ``kv``
  ``(N, B, H, M', Dv)`` and ``z`` ``(N, B, H, 1, M')``, each in units of its own sequence's
  per-feature key maxima ``(N, B, H, 1, M')`` (returned, not differentiable) — the numbers of
  :func:`~performers.ops.bidirectional.fused.exp_key_summary` on that sequence alone;
* :class:`_PackedExpQueryReadout`: every query block read against its sequence's summary.

Inside, forward and backward loop over sequences and over blocks of positions within a
sequence (the per-block work of the unpacked Functions, shared with them:
:func:`~performers.ops.bidirectional.fused.sum_keys` and its neighbours), writing into buffers
of the whole row allocated once. The graph holds two nodes whatever ``N`` — no per-sequence
autograd nodes, no concatenation or split of the row — which is what the per-sequence loop of
:func:`performers.ops.attention._run_packed_loop` paid for in its backward.

Grouped query heads (``enable_gqa``) run without copying keys or values: the row is viewed as
``(Hkv, G, T, D)`` queries against ``(Hkv, 1, T, D)`` keys, and a summary's one head broadcasts
over the ``G`` query heads of its group (its gradient sums over them).

Second derivatives: a backward with ``create_graph=True`` differentiates a PyTorch
recomputation from the saved inputs, one sequence at a time (:mod:`performers.ops.double_backward`),
with the forward's detached maxima.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch import Tensor

from performers.ops.bidirectional.fused import (
    _block_size,
    _key_summary_graph,
    _query_readout_graph,
    keeps_no_features,
    key_grads,
    read_queries,
    readout_grads,
    sum_keys,
)
from performers.ops.double_backward import graph_backward, wants_graph
from performers.ops.features import ExpForm
from performers.ops.numerics import accumulation_dtype

__all__ = ["packed_fused_bidirectional_exp_attention"]


def _sequences(bounds: tuple[int, ...]) -> Iterator[tuple[int, int, int]]:
    """``(s, start, stop)`` of each sequence."""
    for s, (start, stop) in enumerate(itertools.pairwise(bounds)):
        yield s, start, stop


class _PackedExpKeySummary(torch.autograd.Function):
    """Keys and values ``(B, H, T, ·)`` → per-sequence ``kv`` ``(N, B, H, M', Dv)``, ``z``
    ``(N, B, H, 1, M')`` and per-feature key maxima ``(N, B, H, 1, M')`` (not differentiable)."""

    @staticmethod
    def forward(ctx, k, v, rows, scale, norm, bounds, block):
        scaled_rows = rows * scale
        scaled_norm = norm * scale * scale
        b, h = k.shape[:2]
        m, n = scaled_rows.shape[0], len(bounds) - 1
        acc = accumulation_dtype(k.dtype)
        kv = k.new_zeros(n, b, h, m, v.shape[-1], dtype=acc)
        normalizer = k.new_zeros(n, b, h, 1, m, dtype=acc)
        key_max = k.new_empty(n, b, h, 1, m, dtype=acc)
        for s, start, stop in _sequences(bounds):
            # Every sequence has a key and none is padded: its maxima are finite.
            key_max[s] = sum_keys(
                kv[s], normalizer[s], k[:, :, start:stop], v[:, :, start:stop],
                scaled_rows, scaled_norm, None, block, True,
            )  # fmt: skip
        ctx.save_for_backward(k, v, rows, key_max)
        ctx.bounds, ctx.block, ctx.scale, ctx.scaled_norm = bounds, block, scale, scaled_norm
        ctx.mark_non_differentiable(key_max)
        return kv, normalizer, key_max

    @staticmethod
    def backward(ctx, grad_kv, grad_normalizer, _grad_key_max):
        k, v, rows, key_max = ctx.saved_tensors
        bounds, block, scale, scaled_norm = ctx.bounds, ctx.block, ctx.scale, ctx.scaled_norm
        if wants_graph():  # create_graph=True: a differentiable recomputation (double_backward)
            grads = graph_backward(
                (k, v, rows),
                ctx.needs_input_grad[:3],
                lambda k, v, rows: _packed_key_summary_graph(k, v, rows, key_max, bounds, scale, scaled_norm),
                (grad_kv, grad_normalizer),
            )
            return (*grads, None, None, None, None)
        need_k, need_v, need_rows = ctx.needs_input_grad[:3]
        n, b, h = key_max.shape[:3]
        if grad_kv is None:
            grad_kv = k.new_zeros(n, b, h, rows.shape[0], v.shape[-1])
        if grad_normalizer is None:
            grad_normalizer = k.new_zeros(n, b, h, 1, rows.shape[0])
        # Products in the inputs' dtype; the projection's gradient accumulates in float32.
        grad_kv, grad_normalizer, key_max = (t.to(k.dtype) for t in (grad_kv, grad_normalizer, key_max))
        grad_k = torch.empty_like(k) if need_k else None
        grad_v = torch.empty_like(v) if need_v else None
        grad_rows = torch.zeros_like(rows, dtype=accumulation_dtype(rows.dtype)) if need_rows else None
        scaled_rows = rows * scale
        for s, start, stop in _sequences(bounds):
            grads = (
                None if grad_k is None else grad_k[:, :, start:stop],
                None if grad_v is None else grad_v[:, :, start:stop],
                grad_rows,
            )
            key_grads(
                grads, k[:, :, start:stop], v[:, :, start:stop], grad_kv[s], grad_normalizer[s], key_max[s],
                scaled_rows, scaled_norm, scale, None, block,
            )  # fmt: skip
        grad_rows = None if grad_rows is None else grad_rows.to(rows.dtype)
        return grad_k, grad_v, grad_rows, None, None, None, None


class _PackedExpQueryReadout(torch.autograd.Function):
    """Queries ``(B, H, T, D)`` and per-sequence summaries (``kv`` ``(N, B, H', M', Dv)``, ``z``
    ``(N, B, H', 1, M')``, ``H'`` = ``H`` or 1) → ``(B, H, T, Dv)``; ``shift`` ``(N, B, H', 1, M')``:
    each sequence's per-feature key maxima, added to its queries' log-features (constants)."""

    @staticmethod
    def forward(ctx, q, rows, kv, normalizer, scale, bounds, block, eps, shift, recompute):
        scaled_rows = rows * scale
        b, h, t, _ = q.shape
        acc = accumulation_dtype(q.dtype)
        out = q.new_empty(b, h, t, kv.shape[-1])
        inverse_denominator = q.new_empty(b, h, t, 1, dtype=acc)
        # Query features kept for backward unless `recompute` (see _ExpQueryReadout).
        keep = any(ctx.needs_input_grad[:4]) and not recompute
        q_features = q.new_empty(b, h, t, scaled_rows.shape[0]) if keep else None
        # The summaries (accumulated in float32) enter the products in the queries' dtype.
        kv_in, normalizer_in = kv.to(q.dtype), normalizer.to(q.dtype)
        for s, start, stop in _sequences(bounds):
            outs = (
                out[:, :, start:stop],
                inverse_denominator[:, :, start:stop],
                None if q_features is None else q_features[:, :, start:stop],
            )
            read_queries(
                outs, q[:, :, start:stop], scaled_rows, kv_in[s], normalizer_in[s], shift[s], block, eps
            )
        ctx.save_for_backward(q, rows, kv, normalizer, inverse_denominator, out, q_features, shift)
        ctx.bounds, ctx.block, ctx.scale, ctx.eps = bounds, block, scale, eps
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, rows, kv, normalizer, inverse_denominator, out, q_features, shift = ctx.saved_tensors
        bounds, block, scale, eps = ctx.bounds, ctx.block, ctx.scale, ctx.eps
        if wants_graph():  # create_graph=True: a differentiable recomputation (double_backward)
            grads = graph_backward(
                (q, rows, kv, normalizer),
                ctx.needs_input_grad[:4],
                lambda q, rows, kv, normalizer: (
                    _packed_query_readout_graph(q, rows, kv, normalizer, shift, bounds, scale, eps),
                ),
                (grad_out,),
            )
            return (*grads, None, None, None, None, None, None)
        need_q, need_rows, need_kv, need_normalizer = ctx.needs_input_grad[:4]
        grad_kv = torch.zeros_like(kv) if need_kv else None
        grad_normalizer = torch.zeros_like(normalizer) if need_normalizer else None
        grad_q = torch.empty_like(q) if need_q else None
        grad_rows = torch.zeros_like(rows, dtype=accumulation_dtype(q.dtype)) if need_rows else None
        scaled_rows = rows * scale
        kv_in, normalizer_in = kv.to(q.dtype), normalizer.to(q.dtype)
        for s, start, stop in _sequences(bounds):
            grads = (
                None if grad_q is None else grad_q[:, :, start:stop],
                grad_rows,
                None if grad_kv is None else grad_kv[s],
                None if grad_normalizer is None else grad_normalizer[s],
            )
            saved = (
                q[:, :, start:stop],
                None if q_features is None else q_features[:, :, start:stop],
                inverse_denominator[:, :, start:stop],
                out[:, :, start:stop],
            )
            readout_grads(
                grads, grad_out[:, :, start:stop], saved, kv_in[s], normalizer_in[s], shift[s],
                scaled_rows, scale, block,
            )  # fmt: skip
        return (
            grad_q,
            None if grad_rows is None else grad_rows.to(rows.dtype),
            grad_kv,
            grad_normalizer,
            None,
            None,
            None,
            None,
            None,
            None,
        )


def _packed_key_summary_graph(
    k: Tensor,
    v: Tensor,
    rows: Tensor,
    key_max: Tensor,
    bounds: tuple[int, ...],
    scale: float,
    scaled_norm: float,
) -> tuple[Tensor, Tensor]:
    """:class:`_PackedExpKeySummary`'s ``(kv, normalizer)`` in differentiable operations, one
    sequence at a time, in the units of the forward's (detached) per-sequence maxima."""
    summaries = [
        _key_summary_graph(
            k[:, :, start:stop], v[:, :, start:stop], rows, key_max[s], None, scale, scaled_norm
        )
        for s, start, stop in _sequences(bounds)
    ]
    return torch.stack([kv for kv, _ in summaries]), torch.stack([z for _, z in summaries])


def _packed_query_readout_graph(
    q: Tensor,
    rows: Tensor,
    kv: Tensor,
    normalizer: Tensor,
    shift: Tensor,
    bounds: tuple[int, ...],
    scale: float,
    eps: float,
) -> Tensor:
    """:class:`_PackedExpQueryReadout`'s output in differentiable operations, one sequence at a
    time."""
    outs = [
        _query_readout_graph(q[:, :, start:stop], rows, kv[s], normalizer[s], shift[s], scale, eps)
        for s, start, stop in _sequences(bounds)
    ]
    return torch.cat(outs, dim=2)


def packed_fused_bidirectional_exp_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    form: ExpForm,
    *,
    bounds: tuple[int, ...],
    scale: float,
    block_size: int | None = None,
    eps: float | None = None,
    recompute_features: bool = False,
) -> Tensor:
    """Bidirectional FAVOR attention of a packed row with features ``exp(P(√s·x) - a·s‖x‖²/2 - c)``:
    each sequence attends within itself, with its own per-feature key maxima, exactly as
    :func:`~performers.ops.bidirectional.fused.fused_bidirectional_exp_attention` on that
    sequence alone (up to rounding), in two autograd Functions for the whole row.

    Args:
        q: ``(1, H, T, D)``; k: ``(1, Hkv, T, D)``; v: ``(1, Hkv, T, Dv)``, ``Hkv`` dividing
            ``H`` (query head ``h`` reads key/value head ``h // (H / Hkv)``, as SDPA's
            ``enable_gqa``).
        form: the map (``P`` ``(M', D)`` differentiable).
        bounds: the checked ``cu_seqlens`` ``(0, …, T)``, strictly increasing.
        scale: ``√s``, the factor applied to ``q`` and ``k``.
        block_size: positions per block within a sequence, an int >= 1 (default
            :func:`~performers.ops.bidirectional.fused.default_block_size`, as the unpacked call).
        eps: denominator guard (default: the dtype's smallest normal number).
        recompute_features: see :func:`~performers.ops.bidirectional.fused.exp_query_readout`.

    Returns:
        ``(1, H, T, Dv)``.
    """
    heads, kv_heads = q.shape[1], k.shape[1]
    groups = heads // kv_heads
    if groups > 1:
        # (1, Hkv·G, T, ·) → (Hkv, G, T, ·) queries against (Hkv, 1, T, ·) keys: views, no copy.
        q = q.reshape(kv_heads, groups, *q.shape[2:])
        k, v = k.transpose(0, 1), v.transpose(0, 1)
    m = form.rows.shape[0]
    # Default blocks sized as the unpacked call sizes them: one feature block of each stage
    # (keys: Hkv heads, queries: H) holds about 2^19 elements.
    key_block = _block_size(block_size, kv_heads, m)
    query_block = _block_size(block_size, heads, m)
    eps = torch.finfo(q.dtype).tiny if eps is None else eps
    kv, normalizer, key_max = _PackedExpKeySummary.apply(k, v, form.rows, scale, form.norm, bounds, key_block)
    # Per-feature maxima moved to the query side, in the units exp_key_summary returns them
    # (less the map's constant c, which cancels), as the unpacked call does.
    shift = key_max - form.log_const
    out = _PackedExpQueryReadout.apply(
        q,
        form.rows,
        kv,
        normalizer,
        scale,
        bounds,
        query_block,
        eps,
        shift,
        keeps_no_features(recompute_features),
    )
    return out.reshape(1, heads, *out.shape[2:]) if groups > 1 else out
