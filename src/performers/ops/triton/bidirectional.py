r"""Bidirectional FAVOR attention for exponential maps as Triton kernels, forward and backward.

The same algorithm and stabilizers as :mod:`performers.ops.bidirectional.fused`
(``out = φ(Q)(φ(K)ᵀV) / φ(Q)(φ(K)ᵀ1)``; keys by one maximum per feature over the non-padded
keys, moved to the query side, queries by their row maximum after that shift — so the largest
term of every query row is exactly 1 and no row underflows), written as two kernels that never
hold an ``L×M`` tensor:

* a **row pass** (one program per tile of positions, features streamed in tiles): the query
  readout ``φ(q)S / φ(q)z`` in forward, each query's row maximum found as the feature tiles
  stream; in backward the input gradients ``(A Rᵀ + a₂r₂ᵀ)⊙φ · P − a·s·rowsum·x`` (and, for
  keys, ``∂v = φ(k) ∂S``);
* a **feature pass** (one program per tile of features, positions streamed): the key summary
  ``S = φ(K)ᵀV``, ``z = φ(K)ᵀ1`` in forward, each feature's maximum over the keys found as the
  position tiles stream; in backward ``∂S, ∂z`` and the gradient of ``P``.

The forward finds its maxima online, as flash attention finds its softmax maxima: partial sums
are kept in units of the maximum seen so far and rescaled by ``exp(old − new) ≤ 1`` when it
grows, so each forward pass computes every feature tile once (two passes over the projections
instead of four).

Both take per-feature offsets ``col`` (``(B·H, M)``, subtracted from every log-feature of that
feature; constants, so no gradient flows through them): the keys' maxima on the key side, their
negation on the query side.

Backward recomputes every feature tile (queries from their stored row maxima) instead of
storing ``L×M`` features: on a GPU the recomputation is cheaper than the memory traffic.
The gradient of ``P`` is written per batch·head and summed on the host (deterministic, no atomics).

Packed rows (``cu_seqlens``, ``IS_VARLEN``): each program reads its tile's or segment's bounds
and sequence from a host-built table (:class:`PackedTables`), so one launch per pass serves
every sequence with its own per-feature key maxima and summary (``(N·B·H, M, Dv)``).

Second derivatives: a backward run with ``create_graph=True`` differentiates a PyTorch
recomputation of what the kernels compute (:func:`graph_features`, the forward's offsets;
:mod:`performers.ops.double_backward`) instead of launching the backward kernels.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from performers.ops.double_backward import graph_backward, wants_graph
from performers.ops.numerics import accumulation_dtype, safe_reciprocal
from performers.ops.triton.launch import (
    ACTIVATIONS,
    Blocks,
    activation_code,
    compute_types,
    flat,
    kernel_eps,
    pow2,
)
from performers.ops.triton.tiles import (
    EXP,
    feature_tile,
    load_rows,
    load_vector,
    log_features,
    mm,
    running_maximum,
    store_rows,
    store_vector,
)

__all__ = ["triton_bidirectional_attention"]

# Row-pass modes (constexpr globals, readable inside kernels; launches pass ``.value``).
READOUT, QUERY_GRAD, KEY_GRAD, ROW_MAX = (tl.constexpr(i) for i in range(4))
# Feature-pass modes.
SUMMARY, QUERY_PARAMS, KEY_PARAMS = (tl.constexpr(i) for i in range(3))


@triton.jit
def shifted_log_features(
    x, p, half_norm_x, col_ptr, m0, M, HAS_COL: tl.constexpr, BM: tl.constexpr,
    ACC: tl.constexpr, LOW: tl.constexpr, IN: tl.constexpr,
):  # fmt: skip
    """Log-features of a row tile less the per-feature offsets ``col`` of features
    ``m0 .. m0+BM`` (``col_ptr`` already points at this batch·head's row) when ``HAS_COL``."""
    log = log_features(x, p, half_norm_x, LOW, IN)
    if HAS_COL:
        log -= load_vector(col_ptr, m0, M, BM, ACC, 0.0)[None, :]
    return log


@triton.jit
def tile_bounds(table_ptr, entry, first, last, bh, IS_VARLEN: tl.constexpr):
    """A program's positions ``start .. end`` and the row of its key summary and per-feature
    offsets in their ``(N·B·H, M)`` layout. Unpacked: ``first .. last`` and row ``bh``. Packed
    (``IS_VARLEN``): row ``entry`` of the host's ``(start, end, sequence)`` table
    (:class:`PackedTables`), so that every program stays inside one sequence and reads that
    sequence's summary (row ``sequence·B·H + bh``)."""
    start = first
    end = last
    summary = bh
    if IS_VARLEN:
        row = table_ptr + 3 * entry
        start = tl.load(row)
        end = tl.load(row + 1)
        summary = tl.load(row + 2).to(tl.int64) * tl.num_programs(1) + bh
    return start, end, summary


@triton.jit
def row_pass(
    x_ptr, p_ptr, off_ptr, off_bh, off_l, col_ptr, pad_ptr, heads,
    r_ptr, r2_ptr, a_ptr, a2_ptr, out_ptr, inv_ptr, gx_ptr,
    L, M, D, DV, half_norm, eps, table_ptr,
    MODE: tl.constexpr, HAS_PAD: tl.constexpr, HAS_COL: tl.constexpr,
    ACT: tl.constexpr, FEPS: tl.constexpr,
    BL: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
    ACC: tl.constexpr, LOW: tl.constexpr, IN: tl.constexpr, IS_VARLEN: tl.constexpr = False,
):  # fmt: skip
    bh = tl.program_id(1).to(tl.int64)  # 64-bit offsets: (B·H)·L·D may exceed 2³¹
    start, end, summary = tile_bounds(table_ptr, tl.program_id(0), tl.program_id(0) * BL, L, bh, IS_VARLEN)
    rows = start + tl.arange(0, BL)
    valid = rows < end
    if HAS_PAD:
        padded = tl.load(pad_ptr + (bh // heads) * L + rows, mask=valid, other=1)
        valid = valid & (padded == 0)
    x = load_rows(x_ptr + bh * L * D, start, end, D, BL, BD, ACC)
    norm_x = half_norm * tl.sum(x * x, 1)
    col_ptr += summary * M
    if MODE == ROW_MAX:
        # The key row maxima the causal path builds its running maximum from (features
        # streamed once, nothing else computed).
        top = tl.full((BL,), float("-inf"), ACC)
        for m0 in range(0, M, BM):
            cols = m0 + tl.arange(0, BM)
            p = load_rows(p_ptr, m0, M, D, BM, BD, ACC)
            log = shifted_log_features(x, p, norm_x, col_ptr, m0, M, HAS_COL, BM, ACC, LOW, IN)
            log = tl.where(valid[:, None] & (cols[None, :] < M), log, float("-inf"))
            top = tl.maximum(top, tl.max(log, 1))
        store_vector(off_ptr + bh * L, top, start, end, BL)
    else:
        if MODE == READOUT:
            # A query's stabilizer (its row maximum after the keys' per-feature shift) is found
            # while the features stream, as in flash attention: the partial sums are rescaled
            # whenever it grows, so each feature tile is computed once. Generalized kernels are
            # not stabilized (offset 0).
            top = tl.full((BL,), float("-inf"), ACC)
            offset = tl.zeros((BL,), ACC)
        else:
            offset = tl.load(off_ptr + bh * off_bh + rows * off_l, mask=rows < end, other=0.0).to(ACC)
        num = tl.zeros((BL, BV), ACC)
        den = tl.zeros((BL,), ACC)
        grad_x = tl.zeros((BL, BD), ACC)
        row_sum = tl.zeros((BL,), ACC)
        if MODE != READOUT:
            a = load_rows(a_ptr + bh * L * DV, start, end, DV, BL, BV, ACC)
            if MODE == QUERY_GRAD:
                a2 = load_vector(a2_ptr + bh * L, start, end, BL, ACC, 0.0)
            else:
                a2 = tl.full((BL,), 1.0, ACC)
        for m0 in range(0, M, BM):
            cols = m0 + tl.arange(0, BM)
            p = load_rows(p_ptr, m0, M, D, BM, BD, ACC)
            keep = valid[:, None] & (cols[None, :] < M)
            u = shifted_log_features(x, p, norm_x, col_ptr, m0, M, HAS_COL, BM, ACC, LOW, IN)
            if MODE == READOUT and ACT == EXP:
                top, offset, rescale = running_maximum(top, tl.max(tl.where(keep, u, float("-inf")), 1))
                num *= rescale[:, None]
                den *= rescale
            features, slope = feature_tile(u, offset, keep, ACT, FEPS)
            r = load_rows(r_ptr + summary * M * DV, m0, M, DV, BM, BV, ACC)
            r2 = load_vector(r2_ptr + summary * M, m0, M, BM, ACC, 0.0)
            if MODE != QUERY_GRAD:
                num += mm(features, r, LOW, IN)
            if MODE == READOUT:
                den += tl.sum(features * r2[None, :], 1)
            else:
                grad_log = (mm(a, tl.trans(r), LOW, IN) + a2[:, None] * r2[None, :]) * slope
                grad_x += mm(grad_log, p, LOW, IN)
                row_sum += tl.sum(grad_log, 1)
        if MODE == READOUT:
            inverse = tl.where(tl.abs(den) < eps, 0.0, 1.0 / tl.where(tl.abs(den) < eps, 1.0, den))
            store_rows(out_ptr + bh * L * DV, num * inverse[:, None], start, end, DV, BL, BV)
            store_vector(inv_ptr + bh * L, inverse, start, end, BL)
            store_vector(off_ptr + bh * L, offset, start, end, BL)
        else:
            grad_x -= (2.0 * half_norm) * row_sum[:, None] * x
            store_rows(gx_ptr + bh * L * D, grad_x, start, end, D, BL, BD)
            if MODE == KEY_GRAD:
                store_rows(out_ptr + bh * L * DV, num, start, end, DV, BL, BV)


@triton.jit
def feature_pass(
    x_ptr, p_ptr, off_ptr, off_bh, off_l, col_ptr, pad_ptr, heads,
    a_ptr, a2_ptr, r_ptr, r2_ptr, s_ptr, z_ptr, gp_ptr, top_ptr,
    L, M, D, DV, half_norm, span, table_ptr,
    MODE: tl.constexpr, HAS_PAD: tl.constexpr, HAS_COL: tl.constexpr,
    ACT: tl.constexpr, FEPS: tl.constexpr,
    BL: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
    ACC: tl.constexpr, LOW: tl.constexpr, IN: tl.constexpr, IS_VARLEN: tl.constexpr = False,
):  # fmt: skip
    m0 = tl.program_id(0) * BM
    bh = tl.program_id(1).to(tl.int64)
    # This program's part of the sequence (``lo .. hi``); its partial sums go to slot (split,
    # bh). Packed (IS_VARLEN): a segment of one sequence, whose key summary ``summary`` is.
    split = tl.program_id(2)
    slot = split * tl.num_programs(1) + bh
    lo, hi, summary = tile_bounds(
        table_ptr, split, split * span, tl.minimum(split * span + span, L), bh, IS_VARLEN
    )
    cols = m0 + tl.arange(0, BM)
    p = load_rows(p_ptr, m0, M, D, BM, BD, ACC)
    # The key summary of the exponential form finds each feature's maximum over its keys while
    # they stream (flash-attention style): its partial sums are kept in units of the maximum
    # so far and rescaled when it grows; the host brings the splits to one maximum.
    if HAS_COL:
        col = load_vector(col_ptr + summary * M, m0, M, BM, ACC, 0.0)
    if MODE != SUMMARY:
        r = load_rows(r_ptr + summary * M * DV, m0, M, DV, BM, BV, ACC)
        r2 = load_vector(r2_ptr + summary * M, m0, M, BM, ACC, 0.0)
    s = tl.zeros((BM, BV), ACC)
    z = tl.zeros((BM,), ACC)
    top = tl.full((BM,), float("-inf"), ACC)
    column_offset = tl.zeros((BM,), ACC)
    grad_p = tl.zeros((BM, BD), ACC)
    for l0 in range(lo, hi, BL):
        rows = l0 + tl.arange(0, BL)
        valid = rows < hi
        if HAS_PAD:
            padded = tl.load(pad_ptr + (bh // heads) * L + rows, mask=valid, other=1)
            valid = valid & (padded == 0)
        x = load_rows(x_ptr + bh * L * D, l0, hi, D, BL, BD, ACC)
        keep = valid[:, None] & (cols[None, :] < M)
        u = log_features(x, p, half_norm * tl.sum(x * x, 1), LOW, IN)
        if HAS_COL:
            u -= col[None, :]
        if MODE == SUMMARY and ACT == EXP:
            top, column_offset, rescale = running_maximum(top, tl.max(tl.where(keep, u, float("-inf")), 0))
            s *= rescale[:, None]
            z *= rescale
            u -= column_offset[None, :]
        offset = tl.load(off_ptr + bh * off_bh + rows * off_l, mask=rows < hi, other=0.0).to(ACC)
        features, slope = feature_tile(u, offset, keep, ACT, FEPS)
        a = load_rows(a_ptr + bh * L * DV, l0, hi, DV, BL, BV, ACC)
        if MODE == QUERY_PARAMS:
            a2 = load_vector(a2_ptr + bh * L, l0, hi, BL, ACC, 0.0)
        else:
            a2 = tl.full((BL,), 1.0, ACC)
        if MODE != KEY_PARAMS:
            s += mm(tl.trans(features), a, LOW, IN)
            z += tl.sum(features * a2[:, None], 0)
        if MODE != SUMMARY:
            grad_log = (mm(a, tl.trans(r), LOW, IN) + a2[:, None] * r2[None, :]) * slope
            grad_p += mm(tl.trans(grad_log), x, LOW, IN)
    if MODE != KEY_PARAMS:
        store_rows(s_ptr + slot * M * DV, s, m0, M, DV, BM, BV)
        store_vector(z_ptr + slot * M, z, m0, M, BM)
    if MODE == SUMMARY and ACT == EXP:
        store_vector(top_ptr + slot * M, top, m0, M, BM)
    if MODE != SUMMARY:
        store_rows(gp_ptr + slot * M * D, grad_p, m0, M, D, BM, BD)


class PackedTables:
    """Where the programs of a packed call (``cu_seqlens`` boundaries ``bounds``) run: int32
    ``(start, end, sequence)`` rows, one per program along the sequence axis of a grid, so that
    one launch serves every sequence and no program crosses a boundary (FlashAttention's varlen
    convention, the boundaries read on the device).

    * ``rows``: one row per tile of ``tile`` positions of each sequence (the row passes; the
      causal kernels' chunks);
    * ``sequences_rows``: per sequence, its first and end row of ``rows`` (and its index): the
      chunks a causal state program runs through;
    * ``segments``: ``per_sequence`` rows per sequence, its positions cut every ``span`` (the
      reductions; a sequence shorter than the longest gets empty segments, ``start == end``,
      whose sums are 0 and maxima −inf) — so the host combines a sequence's partial sums from
      a ``(N, per_sequence)`` view, in a fixed order (deterministic);
    * for the causal offsets: ``chunk_last``, ``chunk_first`` (per chunk: its last position,
      whether it opens its sequence), ``position_sequence``, ``lasts`` (each sequence's last
      position).

    All are made on the host from the boundaries and moved in one copy."""

    def __init__(self, bounds: tuple[int, ...], tile: int, span: int, device: torch.device) -> None:
        starts, ends = torch.tensor(bounds[:-1]), torch.tensor(bounds[1:])
        lengths, sequence = ends - starts, torch.arange(len(bounds) - 1)
        self.sequences = len(bounds) - 1
        counts = (lengths + tile - 1) // tile  # tiles (causal chunks) per sequence
        firsts = torch.cumsum(counts, 0) - counts
        tile_sequence = torch.repeat_interleave(sequence, counts)
        within = torch.arange(tile_sequence.shape[0]) - firsts[tile_sequence]
        tile_starts = starts[tile_sequence] + within * tile
        rows = torch.stack([tile_starts, ends[tile_sequence], tile_sequence], dim=1)
        self.per_sequence = int(((lengths + span - 1) // span).max())
        cuts = starts[:, None] + torch.arange(self.per_sequence + 1) * span
        cuts = torch.minimum(cuts, ends[:, None])
        owner = sequence[:, None].expand(-1, self.per_sequence)
        segments = torch.stack([cuts[:, :-1], cuts[:, 1:], owner], dim=-1).reshape(-1, 3)
        chunk_ranges = torch.stack([firsts, firsts + counts, sequence], dim=1)
        # Host-side views of the layout for the causal offsets: each chunk's last position and
        # whether it opens its sequence, each position's sequence, each sequence's last position.
        causal = [
            torch.minimum(tile_starts + tile, ends[tile_sequence]) - 1,
            (within == 0).long(),
            torch.repeat_interleave(sequence, lengths),
            ends - 1,
        ]
        parts = [rows, segments, chunk_ranges, *causal]
        # One host-to-device copy for all of them (int32: positions of one row fit).
        flat = torch.cat([part.flatten() for part in parts]).to(torch.int32).to(device)
        pieces = flat.split([part.numel() for part in parts])
        self.rows, self.segments, self.sequence_rows = (p.view(-1, 3) for p in pieces[:3])
        self.chunk_last, first, self.position_sequence, self.lasts = (p.long() for p in pieces[3:])
        self.chunk_first = first.bool()


class _Launch:
    """Shapes, tiles and dtypes of one call, shared by its forward and backward launches
    (``packed``: a packed call's tables, else None: one sequence per batch row)."""

    def __init__(
        self, q: Tensor, k: Tensor, v: Tensor, rows: Tensor, blocks: Blocks, act: int, feps: float,
        bounds: tuple[int, ...] | None = None,
    ) -> None:  # fmt: skip
        self.batch, self.heads, self.lq, self.d = q.shape
        self.lk, self.dv, self.m = k.shape[2], v.shape[-1], rows.shape[0]
        self.bh = self.batch * self.heads
        self.acc = accumulation_dtype(q.dtype)
        self.blocks = blocks
        self.bounds = bounds
        self.packed = None if bounds is None else PackedTables(bounds, blocks.rows, blocks.span, q.device)
        self.meta = dict(
            BL=blocks.rows,
            BM=blocks.features,
            BD=pow2(self.d),
            BV=pow2(self.dv),
            ACT=act,
            FEPS=feps,
            IS_VARLEN=bounds is not None,
            **compute_types(q.dtype),
        )

    @property
    def sequences(self) -> int:
        """Key summaries per batch·head: one per packed sequence (1 unpacked)."""
        return 1 if self.packed is None else self.packed.sequences

    def rows_grid(self, length: int) -> tuple[int, int]:
        if self.packed is not None:
            return (self.packed.rows.shape[0], self.bh)
        return (triton.cdiv(length, self.meta["BL"]), self.bh)

    def features_grid(self, length: int) -> tuple[int, int, int]:
        splits = self.blocks.splits(length) if self.packed is None else self.packed.segments.shape[0]
        return (triton.cdiv(self.m, self.meta["BM"]), self.bh, splits)

    def row_table(self, fallback: Tensor) -> Tensor:
        return fallback if self.packed is None else self.packed.rows

    def segment_table(self, fallback: Tensor) -> Tensor:
        return fallback if self.packed is None else self.packed.segments

    def per_sequence(self, partial: Tensor) -> Tensor:
        """Partial sums ``(splits, B·H, ...)`` as ``(sequences, splits per sequence, B·H, ...)``."""
        return partial.reshape(self.sequences, -1, *partial.shape[1:])


class _TritonBidirectional(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, rows, half_norm, pad, eps, blocks, act, feps, bounds):
        run = _Launch(q, k, v, rows, blocks, act, feps, bounds)
        qf, kf, vf, rows_c = flat(q), flat(k), flat(v), rows.contiguous()
        pad_arg = pad if pad is not None else qf
        acc = dict(device=q.device, dtype=run.acc)
        zero = torch.zeros(run.bh, **acc)  # the keys' row offsets (and every offset of
        key_col = torch.zeros(run.sequences, run.bh, 1, **acc)  # generalized kernels: unstabilized)
        stabilized = act == EXP.value
        grid = run.features_grid(run.lk)
        s = torch.empty(grid[2], run.bh, run.m, run.dv, **acc)
        z = torch.empty(grid[2], run.bh, run.m, **acc)
        column_max = torch.empty(grid[2], run.bh, run.m, **acc)
        feature_pass[grid](
            kf, rows_c, zero, 1, 0, zero, pad_arg, run.heads, vf, vf, vf, vf, s, z, s, column_max,
            run.lk, run.m, run.d, run.dv, half_norm, run.blocks.span, run.segment_table(kf),
            MODE=SUMMARY.value, HAS_PAD=pad is not None, HAS_COL=False, **run.meta,
        )  # fmt: skip
        # Each sequence's summary from its splits (partial sums in the layout (sequence, split,
        # B·H, ...); unpacked: one sequence): S, z and the per-feature offsets are (N·B·H, M, ...).
        s, z, column_max = run.per_sequence(s), run.per_sequence(z), run.per_sequence(column_max)
        if stabilized:
            # One offset per feature, the largest over the splits (a feature of padded keys only
            # is empty: any offset serves); each split's sums come to it by exp(own − it) ≤ 1.
            # The queries take it back, so a product of a query and a key feature is unchanged.
            key_col = column_max.amax(dim=1)
            key_col = torch.where(torch.isfinite(key_col), key_col, 0.0).contiguous()
            weight = torch.exp(column_max - key_col[:, None])
            s = torch.einsum("nsbm,nsbmv->nbmv", weight, s).contiguous()
            z = torch.einsum("nsbm,nsbm->nbm", weight, z).contiguous()
        else:
            s, z = s.sum(1), z.sum(1)
        columns = dict(HAS_COL=stabilized, **run.meta)
        out = torch.empty(run.bh, run.lq, run.dv, **acc)
        inverse = torch.empty(run.bh, run.lq, **acc)
        query_max = torch.empty(run.bh, run.lq, **acc)
        row_pass[run.rows_grid(run.lq)](
            qf, rows_c, query_max, 0, 0, (-key_col).contiguous(), qf, run.heads, s, z, qf, qf, out,
            inverse, qf, run.lq, run.m, run.d, run.dv, 0.0, eps, run.row_table(qf),
            MODE=READOUT.value, HAS_PAD=False, **columns,
        )  # fmt: skip
        # The inputs as given (their flat copies above are made without a graph): a
        # differentiable recomputation needs them connected.
        ctx.save_for_backward(q, k, v, rows, key_col, query_max, s, z, out, inverse, pad)
        ctx.run, ctx.half_norm, ctx.stabilized = run, half_norm, stabilized
        ctx.eps, ctx.act, ctx.feps = eps, act, feps
        return out.reshape(run.batch, run.heads, run.lq, run.dv)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, rows, key_col, query_max, s, z, out, inverse, pad = ctx.saved_tensors
        run, half_norm = ctx.run, ctx.half_norm
        if wants_graph():  # create_graph=True: a PyTorch recomputation (ops.double_backward)

            def recompute(q, k, v, rows) -> tuple[Tensor]:
                return (
                    _bidirectional_graph(
                        q, k, v, rows, key_col, pad, half_norm, ctx.act, ctx.feps, ctx.eps, run.bounds
                    ),
                )

            grads = graph_backward((q, k, v, rows), ctx.needs_input_grad[:4], recompute, (grad_out,))
            return (*grads, *(None,) * 7)
        qf, kf, vf, rows = flat(q), flat(k), flat(v), rows.contiguous()
        acc = dict(device=qf.device, dtype=run.acc)
        zero, query_col = torch.zeros(run.bh, **acc), (-key_col).contiguous()  # as in forward
        columns = dict(HAS_COL=ctx.stabilized, **run.meta)
        # out = num/den: ∂num = g/den, ∂den = -Σ g·out/den (0 where the guard was active).
        grad_num = (flat(grad_out).to(run.acc) * inverse[..., None]).contiguous()
        grad_den = -(grad_num * out).sum(-1).contiguous()
        grid = run.features_grid(run.lq)
        grad_s = torch.empty(grid[2], run.bh, run.m, run.dv, **acc)
        grad_z = torch.empty(grid[2], run.bh, run.m, **acc)
        grad_p_q = torch.empty(grid[2], run.bh, run.m, run.d, **acc)
        feature_pass[grid](
            qf, rows, query_max, run.lq, 1, query_col, qf, run.heads, grad_num, grad_den, s, z,
            grad_s, grad_z, grad_p_q, grad_p_q, run.lq, run.m, run.d, run.dv, 0.0, run.blocks.span,
            run.segment_table(qf), MODE=QUERY_PARAMS.value, HAS_PAD=False, **columns,
        )  # fmt: skip
        grad_s = run.per_sequence(grad_s).sum(1).contiguous()
        grad_z = run.per_sequence(grad_z).sum(1).contiguous()
        grad_q = torch.empty(run.bh, run.lq, run.d, **acc)
        row_pass[run.rows_grid(run.lq)](
            qf, rows, query_max, run.lq, 1, query_col, qf, run.heads, s, z, grad_num, grad_den,
            qf, qf, grad_q, run.lq, run.m, run.d, run.dv, 0.0, 0.0, run.row_table(qf),
            MODE=QUERY_GRAD.value, HAS_PAD=False, **columns,
        )  # fmt: skip
        pad_arg = pad if pad is not None else kf
        grid = run.features_grid(run.lk)
        grad_p_k = torch.empty(grid[2], run.bh, run.m, run.d, **acc)
        feature_pass[grid](
            kf, rows, zero, 1, 0, key_col, pad_arg, run.heads, vf, vf, grad_s, grad_z, kf, kf, grad_p_k, kf,
            run.lk, run.m, run.d, run.dv, half_norm, run.blocks.span, run.segment_table(kf),
            MODE=KEY_PARAMS.value, HAS_PAD=pad is not None, **columns,
        )  # fmt: skip
        grad_k = torch.empty(run.bh, run.lk, run.d, **acc)
        grad_v = torch.empty(run.bh, run.lk, run.dv, **acc)
        row_pass[run.rows_grid(run.lk)](
            kf, rows, zero, 1, 0, key_col, pad_arg, run.heads, grad_s, grad_z, vf, vf, grad_v, kf, grad_k,
            run.lk, run.m, run.d, run.dv, half_norm, 0.0, run.row_table(kf),
            MODE=KEY_GRAD.value, HAS_PAD=pad is not None, **columns,
        )  # fmt: skip
        shape = (run.batch, run.heads)
        return (
            grad_q.reshape(*shape, run.lq, run.d),
            grad_k.reshape(*shape, run.lk, run.d),
            grad_v.reshape(*shape, run.lk, run.dv),
            grad_p_q.sum((0, 1)) + grad_p_k.sum((0, 1)),
            *(None,) * 7,
        )


def torch_features(u: Tensor, act: int, feature_eps: float) -> Tensor:
    """A generalized kernel's features ``f(u) + feature_eps`` in PyTorch operations, as
    ``tiles.feature_tile`` computes them (``act`` a code of ``launch.ACTIVATIONS`` other than
    the exponential form's)."""
    if act == ACTIVATIONS["relu"]:
        value = torch.relu(u)
    elif act == ACTIVATIONS["elu"]:
        value = F.elu(u) + 1.0
    elif act == ACTIVATIONS["abs"]:
        value = u.abs()
    else:
        value = torch.exp(u)
    return value + feature_eps


def graph_features(
    q: Tensor, k: Tensor, rows: Tensor, pad: Tensor | None, half_norm: float, act: int, feature_eps: float,
    key_offsets: Tensor | None, query_shift: Tensor | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Query and key features ``(B, H, L, M')`` as the kernels compute them, in differentiable
    PyTorch operations: the exponential form's keys in units of the (detached) ``key_offsets``
    (broadcasting to ``(B, H, Lk, M')``), its queries shifted by ``query_shift`` (``(B, H, 1,
    M')`` or None) and by their row maximum; padded keys (``pad`` ``(B, Lk)``, nonzero:
    padded) are zero."""
    u_q, u_k = torch.matmul(q, rows.t()), torch.matmul(k, rows.t())
    padded = None if pad is None else pad.bool()[:, None, :, None]
    if act == EXP.value:
        log_k = u_k - half_norm * k.square().sum(-1, keepdim=True)
        if padded is not None:  # -inf before exp: a padded key is an exact 0, zero gradient
            log_k = log_k.masked_fill(padded, -math.inf)
        k_features = torch.exp(log_k - key_offsets)
        if query_shift is not None:
            u_q = u_q + query_shift
        q_features = torch.exp(u_q - u_q.detach().amax(dim=-1, keepdim=True))
        return q_features, k_features
    k_features = torch_features(u_k, act, feature_eps)
    if padded is not None:
        k_features = k_features.masked_fill(padded, 0.0)
    return torch_features(u_q, act, feature_eps), k_features


def _bidirectional_graph(
    q: Tensor, k: Tensor, v: Tensor, rows: Tensor, key_col: Tensor, pad: Tensor | None, half_norm: float,
    act: int, feature_eps: float, eps: float, bounds: tuple[int, ...] | None = None,
) -> Tensor:  # fmt: skip
    """:class:`_TritonBidirectional`'s output in differentiable PyTorch operations, in the
    forward's units (``key_col`` ``(N·B·H, M')``: the per-feature key maxima of each of the N
    sequences, detached); a packed call (``bounds``) as one recomputation per sequence."""
    if bounds is not None:
        sizes = [end - start for start, end in itertools.pairwise(bounds)]
        cols = key_col.reshape(len(sizes), -1, key_col.shape[-1])
        pieces = zip(*(t.split(sizes, dim=2) for t in (q, k, v)), cols, strict=True)
        options = (pad, half_norm, act, feature_eps, eps)
        return torch.cat([_bidirectional_graph(*x, rows, col, *options) for *x, col in pieces], dim=2)
    acc = accumulation_dtype(q.dtype)
    q, k, v, rows = (t.to(acc) for t in (q, k, v, rows))
    offsets = key_col.reshape(q.shape[0], q.shape[1], 1, -1)
    # The per-feature key maxima move to the queries (as in the forward's readout).
    q_features, k_features = graph_features(q, k, rows, pad, half_norm, act, feature_eps, offsets, offsets)
    summary = torch.matmul(k_features.transpose(-2, -1), v)
    denominator = torch.matmul(q_features, k_features.sum(-2).unsqueeze(-1))
    return torch.matmul(q_features, summary) * safe_reciprocal(denominator, eps)


def triton_bidirectional_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rows: Tensor,
    *,
    scale: float,
    activation: str = "exp",
    norm: float = 0.0,
    feature_eps: float = 1e-3,
    key_padding_mask: Tensor | None = None,
    eps: float | None = None,
    blocks: Blocks | None = None,
    cu_seqlens: tuple[int, ...] | None = None,
) -> Tensor:
    """Bidirectional FAVOR attention (Triton) with features ``exp(P(√s·x) − a·s‖x‖²/2 − c)``
    (``activation="exp"``) or ``f(P(√s·x)) + feature_eps`` (a generalized kernel: ``"relu"``,
    ``"elu"`` (ELU + 1), ``"abs"``, ``"plain-exp"``).

    Args:
        q: ``(B, H, Lq, D)``; k: ``(B, H, Lk, D)``; v: ``(B, H, Lk, Dv)``; one floating dtype
            (float16/bfloat16 products accumulate in float32).
        rows: ``P`` ``(M', D)`` (differentiable): the :class:`~performers.ops.features.ExpForm`'s
            rows, a generalized kernel's projection, or the identity for "no projection".
        scale: ``√s``, the factor applied to ``q`` and ``k``.
        activation, norm (``a`` of the exponential form), feature_eps: the feature map.
        key_padding_mask: ``(B, Lk)`` bool, True marks a padded key.
        eps: denominator guard (default: the accumulation dtype's smallest normal number).
        blocks: tile sizes (default :meth:`Blocks.for_dims`).
        cu_seqlens: a packed batch's boundaries ``(0, …, L)`` as ints (checked by the caller):
            ``q``, ``k``, ``v`` are ``(1, H, L, ·)`` holding the sequences back to back, each
            attending within itself with its own per-feature key maxima — every pass one
            launch for all sequences (:class:`PackedTables`). No ``key_padding_mask`` then.

    Returns:
        ``(B, H, Lq, Dv)`` in float32 (float64 for float64 inputs).
    """
    act = activation_code(activation)
    acc = accumulation_dtype(q.dtype)
    eps = kernel_eps(eps, acc)
    pad = None if key_padding_mask is None else key_padding_mask.to(torch.int8).contiguous()
    # The map of √s·x is computed on x with rows √s·P (autograd scales ∂P) and norm a·s; P
    # stays in the accumulation dtype (compiled low-precision products round its tiles).
    scaled_rows = (rows * scale).to(acc)
    half_norm = 0.5 * norm * scale * scale if act == EXP.value else 0.0
    blocks = blocks or Blocks.for_dims(q.shape[-1], v.shape[-1], q.dtype)
    bounds = None if cu_seqlens is None else tuple(int(b) for b in cu_seqlens)
    return _TritonBidirectional.apply(
        q, k, v, scaled_rows, half_norm, pad, eps, blocks, act, float(feature_eps), bounds
    )
