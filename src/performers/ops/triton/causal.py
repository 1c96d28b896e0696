r"""Causal FAVOR attention for exponential maps as chunked Triton kernels, forward and backward.

The chunked algorithm of :mod:`performers.ops.causal.fused` with the same causal-safe
stabilizer: key ``j`` is read in units of the running maximum ``m_j`` of the key log-features
up to ``j`` (computed once per position by the row pass of
:mod:`performers.ops.triton.bidirectional` and a cumulative maximum); query ``i`` reads key
``j ≤ i`` scaled by ``exp(m_j − m_i) ≤ 1``, and the state entering chunk ``c`` is kept in units
of the offset at the end of chunk ``c − 1``. Four kernels:

* ``state_pass`` (one program per feature tile, chunks in order): the state before every chunk
  ``S_c`` ``(M × Dv)``, ``z_c`` ``(M)`` and the final state, from an optional initial state;
* ``output_pass`` (one program per chunk): the masked intra-chunk block plus the read of
  ``S_c``, normalized; each query's row maximum is found as the feature tiles stream (partial
  sums rescaled by ``exp(old − new)`` when it grows), so every feature tile is computed once;
* ``adjoint_pass`` (per feature tile, chunks in reverse): the gradient of the state entering
  every chunk, and of the initial state;
* ``input_grad_pass`` (per chunk) and ``param_grad_pass`` (per feature tile): ``∂q, ∂k, ∂v``
  and ``∂P`` from recomputed feature tiles.

Memory is ``O(L·(D + Dv) + (L/C)·M·Dv)``: no ``L×M`` tensor exists in forward or backward.
The chunk length is the kernel's tile (``Blocks.rows``); results do not depend on it.

Packed rows (``cu_seqlens``, ``IS_VARLEN``): chunks stop at each boundary (a table of their
bounds, :class:`~performers.ops.triton.bidirectional.PackedTables`), key offsets restart per
sequence, and the state passes run one program per (feature tile, batch·head, sequence) through
that sequence's chunks, from and to its own state: every pass is one launch for all sequences.

Second derivatives: a backward run with ``create_graph=True`` differentiates a PyTorch
recomputation of the same chunked algorithm instead (:mod:`performers.ops.double_backward`).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from performers.ops.double_backward import graph_backward, wants_graph
from performers.ops.numerics import (
    accumulation_dtype,
    chunk_rescale_factors,
    key_offsets,
    packed_key_offsets,
    safe_reciprocal,
    state_carry_factors,
    with_ones,
)
from performers.ops.triton.bidirectional import ROW_MAX, PackedTables, graph_features, row_pass
from performers.ops.triton.launch import (
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

__all__ = ["triton_causal_attention"]


@triton.jit
def chunk_bounds(table_ptr, c, L, BC: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Chunk ``c``'s first position and the end its positions stop at: ``c·BC`` and ``L``, or
    for a packed call (``IS_VARLEN``) row ``c`` of the host's chunk table (``(start, end of its
    sequence, sequence)``, :class:`~performers.ops.triton.bidirectional.PackedTables`): chunks
    never cross a boundary, so a chunk's state is its sequence's."""
    l0 = c * BC
    end = L
    if IS_VARLEN:
        l0 = tl.load(table_ptr + 3 * c)
        end = tl.load(table_ptr + 3 * c + 1)
    return l0, end


@triton.jit
def sequence_chunks(seqs_ptr, N, bh, IS_VARLEN: tl.constexpr):
    """The chunks ``c_lo .. c_hi`` a state program runs through and the row of its initial and
    final states: all ``N`` and ``bh``, or for a packed call sequence ``program_id(2)``'s (from
    the host's ``(first chunk, end chunk, sequence)`` table) and row ``sequence·B·H + bh``."""
    c_lo = 0
    c_hi = N
    row = bh
    if IS_VARLEN:
        sequence = tl.program_id(2)
        c_lo = tl.load(seqs_ptr + 3 * sequence)
        c_hi = tl.load(seqs_ptr + 3 * sequence + 1)
        row = sequence.to(tl.int64) * tl.num_programs(1) + bh
    return c_lo, c_hi, row


@triton.jit
def _chunk_rows(pad_ptr, bh, heads, l0, L, HAS_PAD: tl.constexpr, BC: tl.constexpr):
    """Positions of a chunk, whether they exist, and whether they are real (unpadded) keys."""
    rows = l0 + tl.arange(0, BC)
    exists = rows < L
    real = exists
    if HAS_PAD:
        padded = tl.load(pad_ptr + (bh // heads) * L + rows, mask=exists, other=1)
        real = exists & (padded == 0)
    return rows, exists, real


@triton.jit
def _features(
    x, p, norm_x, offset, keep, ACT: tl.constexpr, FEPS: tl.constexpr, LOW: tl.constexpr, IN: tl.constexpr
):
    """``(φ, ∂φ/∂u)`` of a tile where ``keep`` (else 0): ``exp(log φ(x) − offset)`` or ``f(u) + eps``."""
    return feature_tile(log_features(x, p, norm_x, LOW, IN), offset, keep, ACT, FEPS)


@triton.jit
def _grad_scores(gn, gd, v, m, rows, real, LOW: tl.constexpr, IN: tl.constexpr):
    """``within ⊙ (gn Vᵀ + gd)`` of a chunk, and ``within``: ``exp(m_j − m_i)`` for real keys
    ``j ≤ i``, else 0."""
    causal = (rows[None, :] <= rows[:, None]) & real[None, :]
    within = tl.where(causal, tl.exp(tl.minimum(m[None, :] - m[:, None], 0.0)), 0.0)
    return (mm(gn, tl.trans(v), LOW, IN) + gd[:, None]) * within, within


@triton.jit
def _grad_logs(
    states_s_ptr, states_z_ptr, adj_z_ptr, g, base, m0, M, DV, fq, slope_q, fk, slope_k,
    grad_scores, gn, gd, v, to_query, to_end,
    BM: tl.constexpr, BV: tl.constexpr, ACC: tl.constexpr, LOW: tl.constexpr, IN: tl.constexpr,
):  # fmt: skip
    """``∂loss/∂u`` of a chunk's query and key pre-activations on one feature tile: the
    intra-chunk block, the read of the state entering the chunk (queries) and the state after
    it (keys, through its adjoint ``g``, ``gz``)."""
    s = load_rows(states_s_ptr + base * DV, m0, M, DV, BM, BV, ACC)
    z = load_vector(states_z_ptr + base, m0, M, BM, ACC, 0.0)
    gz = load_vector(adj_z_ptr + base, m0, M, BM, ACC, 0.0)
    read = mm(gn, tl.trans(s), LOW, IN) + gd[:, None] * z[None, :]
    grad_log_q = (mm(grad_scores, fk, LOW, IN) + to_query[:, None] * read) * slope_q
    carried = mm(v, tl.trans(g), LOW, IN) + gz[None, :]
    grad_log_k = (mm(tl.trans(grad_scores), fq, LOW, IN) + to_end[:, None] * carried) * slope_k
    return grad_log_q, grad_log_k


@triton.jit
def _backward_chunk(
    q_ptr, k_ptr, v_ptr, qmax_ptr, off_ptr, end_ptr, before_ptr, pad_ptr, gn_ptr, gd_ptr,
    bh, heads, c, l0, end, L, D, DV, N,
    HAS_PAD: tl.constexpr, BC: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
    ACC: tl.constexpr, LOW: tl.constexpr, IN: tl.constexpr,
):  # fmt: skip
    """What both backward kernels read of chunk ``c`` (positions ``l0 ..`` before ``end``): its
    positions and masks, q, k, v, the output's gradients (``gn``, ``gd``), the offsets and
    query maxima, the rescaling factors to the query and to the chunk's end, and the masked
    ``∂scores`` block with ``within``."""
    rows, exists, real = _chunk_rows(pad_ptr, bh, heads, l0, end, HAS_PAD, BC)
    xq = load_rows(q_ptr + bh * L * D, l0, end, D, BC, BD, ACC)
    xk = load_rows(k_ptr + bh * L * D, l0, end, D, BC, BD, ACC)
    v = load_rows(v_ptr + bh * L * DV, l0, end, DV, BC, BV, ACC)
    gn = load_rows(gn_ptr + bh * L * DV, l0, end, DV, BC, BV, ACC)
    gd = load_vector(gd_ptr + bh * L, l0, end, BC, ACC, 0.0)
    m = load_vector(off_ptr + bh * L, l0, end, BC, ACC, 0.0)
    top = load_vector(qmax_ptr + bh * L, l0, end, BC, ACC, 0.0)
    to_query = tl.exp(tl.minimum(tl.load(before_ptr + bh * N + c).to(ACC) - m, 0.0))
    to_end = tl.exp(tl.minimum(m - tl.load(end_ptr + bh * N + c).to(ACC), 0.0))
    grad_scores, within = _grad_scores(gn, gd, v, m, rows, real, LOW, IN)
    return rows, exists, real, xq, xk, v, gn, gd, m, top, to_query, to_end, grad_scores, within


@triton.jit
def state_pass(
    k_ptr, v_ptr, p_ptr, end_ptr, before_ptr, pad_ptr, heads,
    init_s_ptr, init_z_ptr, states_s_ptr, states_z_ptr, final_s_ptr, final_z_ptr,
    L, M, D, DV, N, half_norm, table_ptr, seqs_ptr,
    HAS_INIT: tl.constexpr, HAS_PAD: tl.constexpr, ACT: tl.constexpr, FEPS: tl.constexpr,
    BC: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
    ACC: tl.constexpr, LOW: tl.constexpr, IN: tl.constexpr, IS_VARLEN: tl.constexpr = False,
):  # fmt: skip
    m0 = tl.program_id(0) * BM
    bh = tl.program_id(1).to(tl.int64)  # 64-bit offsets: (B·H)·L·D may exceed 2³¹
    c_lo, c_hi, state = sequence_chunks(seqs_ptr, N, bh, IS_VARLEN)
    cols = m0 + tl.arange(0, BM)
    p = load_rows(p_ptr, m0, M, D, BM, BD, ACC)
    if HAS_INIT:
        s = load_rows(init_s_ptr + state * M * DV, m0, M, DV, BM, BV, ACC)
        z = load_vector(init_z_ptr + state * M, m0, M, BM, ACC, 0.0)
    else:
        s = tl.zeros((BM, BV), ACC)
        z = tl.zeros((BM,), ACC)
    for c in range(c_lo, c_hi):
        store_rows(states_s_ptr + (bh * N + c) * M * DV, s, m0, M, DV, BM, BV)
        store_vector(states_z_ptr + (bh * N + c) * M, z, m0, M, BM)
        end = tl.load(end_ptr + bh * N + c).to(ACC)
        decay = tl.exp(tl.minimum(tl.load(before_ptr + bh * N + c).to(ACC) - end, 0.0))
        l0, stop = chunk_bounds(table_ptr, c, L, BC, IS_VARLEN)
        _, _, real = _chunk_rows(pad_ptr, bh, heads, l0, stop, HAS_PAD, BC)
        x = load_rows(k_ptr + bh * L * D, l0, stop, D, BC, BD, ACC)
        # Keys in units of the chunk's last offset (≥ their own): exp(log − m_end) ≤ 1.
        keep = real[:, None] & (cols[None, :] < M)
        f, _ = _features(
            x, p, half_norm * tl.sum(x * x, 1), tl.zeros((BC,), ACC) + end, keep, ACT, FEPS, LOW, IN
        )
        v = load_rows(v_ptr + bh * L * DV, l0, stop, DV, BC, BV, ACC)
        s = s * decay + mm(tl.trans(f), v, LOW, IN)
        z = z * decay + tl.sum(f, 0)
    store_rows(final_s_ptr + state * M * DV, s, m0, M, DV, BM, BV)
    store_vector(final_z_ptr + state * M, z, m0, M, BM)


@triton.jit
def output_pass(
    q_ptr, k_ptr, v_ptr, p_ptr, off_ptr, before_ptr, pad_ptr, heads,
    states_s_ptr, states_z_ptr, out_ptr, inv_ptr, qmax_ptr,
    L, M, D, DV, N, half_norm, eps, table_ptr,
    HAS_PAD: tl.constexpr, ACT: tl.constexpr, FEPS: tl.constexpr,
    BC: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
    ACC: tl.constexpr, LOW: tl.constexpr, IN: tl.constexpr, IS_VARLEN: tl.constexpr = False,
):  # fmt: skip
    c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    l0, end = chunk_bounds(table_ptr, c, L, BC, IS_VARLEN)
    rows, exists, real = _chunk_rows(pad_ptr, bh, heads, l0, end, HAS_PAD, BC)
    xq = load_rows(q_ptr + bh * L * D, l0, end, D, BC, BD, ACC)
    xk = load_rows(k_ptr + bh * L * D, l0, end, D, BC, BD, ACC)
    norm_k = half_norm * tl.sum(xk * xk, 1)
    zero = tl.zeros((BC,), ACC)
    m = load_vector(off_ptr + bh * L, l0, end, BC, ACC, 0.0)
    # A query's stabilizer, its row maximum, is found while the features stream (flash-attention
    # style): the partial sums are rescaled whenever it grows, so each feature tile is computed
    # once. Generalized kernels are not stabilized (offset 0).
    top = tl.full((BC,), float("-inf"), ACC)
    offset = tl.zeros((BC,), ACC)
    scores = tl.zeros((BC, BC), ACC)
    inter_num = tl.zeros((BC, BV), ACC)
    inter_den = tl.zeros((BC,), ACC)
    base = (bh * N + c) * M
    for m0 in range(0, M, BM):
        cols = m0 + tl.arange(0, BM)
        p = load_rows(p_ptr, m0, M, D, BM, BD, ACC)
        keep_q = exists[:, None] & (cols[None, :] < M)
        log_q = log_features(xq, p, zero, LOW, IN)
        if ACT == EXP:
            top, offset, rescale = running_maximum(top, tl.max(tl.where(keep_q, log_q, float("-inf")), 1))
            scores *= rescale[:, None]
            inter_num *= rescale[:, None]
            inter_den *= rescale
        fq, _ = feature_tile(log_q, offset, keep_q, ACT, FEPS)
        fk, _ = _features(xk, p, norm_k, m, real[:, None] & (cols[None, :] < M), ACT, FEPS, LOW, IN)
        scores += mm(fq, tl.trans(fk), LOW, IN)
        inter_num += mm(fq, load_rows(states_s_ptr + base * DV, m0, M, DV, BM, BV, ACC), LOW, IN)
        inter_den += tl.sum(fq * load_vector(states_z_ptr + base, m0, M, BM, ACC, 0.0)[None, :], 1)
    causal = (rows[None, :] <= rows[:, None]) & real[None, :]
    scores = scores * tl.where(causal, tl.exp(tl.minimum(m[None, :] - m[:, None], 0.0)), 0.0)
    to_query = tl.exp(tl.minimum(tl.load(before_ptr + bh * N + c).to(ACC) - m, 0.0))
    v = load_rows(v_ptr + bh * L * DV, l0, end, DV, BC, BV, ACC)
    num = mm(scores, v, LOW, IN) + to_query[:, None] * inter_num
    den = tl.sum(scores, 1) + to_query * inter_den
    inverse = tl.where(tl.abs(den) < eps, 0.0, 1.0 / tl.where(tl.abs(den) < eps, 1.0, den))
    store_rows(out_ptr + bh * L * DV, num * inverse[:, None], l0, end, DV, BC, BV)
    store_vector(inv_ptr + bh * L, inverse, l0, end, BC)
    store_vector(qmax_ptr + bh * L, offset, l0, end, BC)


@triton.jit
def adjoint_pass(
    q_ptr, p_ptr, qmax_ptr, off_ptr, end_ptr, before_ptr, gn_ptr, gd_ptr,
    final_gs_ptr, final_gz_ptr, adj_s_ptr, adj_z_ptr, init_gs_ptr, init_gz_ptr,
    L, M, D, DV, N, table_ptr, seqs_ptr,
    HAS_FINAL_GRAD: tl.constexpr, ACT: tl.constexpr, FEPS: tl.constexpr,
    BC: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
    ACC: tl.constexpr, LOW: tl.constexpr, IN: tl.constexpr, IS_VARLEN: tl.constexpr = False,
):  # fmt: skip
    m0 = tl.program_id(0) * BM
    bh = tl.program_id(1).to(tl.int64)
    c_lo, c_hi, state = sequence_chunks(seqs_ptr, N, bh, IS_VARLEN)
    cols = m0 + tl.arange(0, BM)
    p = load_rows(p_ptr, m0, M, D, BM, BD, ACC)
    # g: ∂loss/∂(state after the chunk being visited), starting from the final state's gradient.
    if HAS_FINAL_GRAD:
        g = load_rows(final_gs_ptr + state * M * DV, m0, M, DV, BM, BV, ACC)
        gz = load_vector(final_gz_ptr + state * M, m0, M, BM, ACC, 0.0)
    else:
        g = tl.zeros((BM, BV), ACC)
        gz = tl.zeros((BM,), ACC)
    zero = tl.zeros((BC,), ACC)
    for i in range(0, c_hi - c_lo):
        c = c_hi - 1 - i
        store_rows(adj_s_ptr + (bh * N + c) * M * DV, g, m0, M, DV, BM, BV)
        store_vector(adj_z_ptr + (bh * N + c) * M, gz, m0, M, BM)
        before = tl.load(before_ptr + bh * N + c).to(ACC)
        decay = tl.exp(tl.minimum(before - tl.load(end_ptr + bh * N + c).to(ACC), 0.0))
        l0, end = chunk_bounds(table_ptr, c, L, BC, IS_VARLEN)
        rows = l0 + tl.arange(0, BC)
        exists = rows < end
        xq = load_rows(q_ptr + bh * L * D, l0, end, D, BC, BD, ACC)
        top = load_vector(qmax_ptr + bh * L, l0, end, BC, ACC, 0.0)
        fq, _ = _features(xq, p, zero, top, exists[:, None] & (cols[None, :] < M), ACT, FEPS, LOW, IN)
        to_query = tl.exp(tl.minimum(before - load_vector(off_ptr + bh * L, l0, end, BC, ACC, 0.0), 0.0))
        gn = load_rows(gn_ptr + bh * L * DV, l0, end, DV, BC, BV, ACC) * to_query[:, None]
        gd = load_vector(gd_ptr + bh * L, l0, end, BC, ACC, 0.0) * to_query
        g = g * decay + mm(tl.trans(fq), gn, LOW, IN)
        gz = gz * decay + tl.sum(fq * gd[:, None], 0)
    store_rows(init_gs_ptr + state * M * DV, g, m0, M, DV, BM, BV)
    store_vector(init_gz_ptr + state * M, gz, m0, M, BM)


@triton.jit
def input_grad_pass(
    q_ptr, k_ptr, v_ptr, p_ptr, qmax_ptr, off_ptr, end_ptr, before_ptr, pad_ptr, heads,
    states_s_ptr, states_z_ptr, adj_s_ptr, adj_z_ptr, gn_ptr, gd_ptr, gq_ptr, gk_ptr, gv_ptr,
    L, M, D, DV, N, half_norm, table_ptr,
    HAS_PAD: tl.constexpr, ACT: tl.constexpr, FEPS: tl.constexpr,
    BC: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
    ACC: tl.constexpr, LOW: tl.constexpr, IN: tl.constexpr, IS_VARLEN: tl.constexpr = False,
):  # fmt: skip
    c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    l0, end = chunk_bounds(table_ptr, c, L, BC, IS_VARLEN)
    _rows, exists, real, xq, xk, v, gn, gd, m, top, to_query, to_end, grad_scores, within = _backward_chunk(
        q_ptr, k_ptr, v_ptr, qmax_ptr, off_ptr, end_ptr, before_ptr, pad_ptr, gn_ptr, gd_ptr,
        bh, heads, c, l0, end, L, D, DV, N, HAS_PAD, BC, BD, BV, ACC, LOW, IN,
    )  # fmt: skip
    norm_k = half_norm * tl.sum(xk * xk, 1)
    zero = tl.zeros((BC,), ACC)
    # The intra-chunk scores are needed whole for ∂v: one pass to build them, one for the rest.
    scores = tl.zeros((BC, BC), ACC)
    for m0 in range(0, M, BM):
        cols = m0 + tl.arange(0, BM)
        p = load_rows(p_ptr, m0, M, D, BM, BD, ACC)
        fq, _ = _features(xq, p, zero, top, exists[:, None] & (cols[None, :] < M), ACT, FEPS, LOW, IN)
        fk, _ = _features(xk, p, norm_k, m, real[:, None] & (cols[None, :] < M), ACT, FEPS, LOW, IN)
        scores += mm(fq, tl.trans(fk), LOW, IN)
    grad_v = mm(tl.trans(scores * within), gn, LOW, IN)
    grad_q = tl.zeros((BC, BD), ACC)
    grad_k = tl.zeros((BC, BD), ACC)
    row_sum_k = tl.zeros((BC,), ACC)
    base = (bh * N + c) * M
    for m0 in range(0, M, BM):
        cols = m0 + tl.arange(0, BM)
        p = load_rows(p_ptr, m0, M, D, BM, BD, ACC)
        fq, slope_q = _features(xq, p, zero, top, exists[:, None] & (cols[None, :] < M), ACT, FEPS, LOW, IN)
        fk, slope_k = _features(xk, p, norm_k, m, real[:, None] & (cols[None, :] < M), ACT, FEPS, LOW, IN)
        g = load_rows(adj_s_ptr + base * DV, m0, M, DV, BM, BV, ACC)
        grad_log_q, grad_log_k = _grad_logs(
            states_s_ptr, states_z_ptr, adj_z_ptr, g, base, m0, M, DV, fq, slope_q, fk, slope_k,
            grad_scores, gn, gd, v, to_query, to_end, BM, BV, ACC, LOW, IN,
        )  # fmt: skip
        grad_q += mm(grad_log_q, p, LOW, IN)
        grad_k += mm(grad_log_k, p, LOW, IN)
        row_sum_k += tl.sum(grad_log_k, 1)
        grad_v += to_end[:, None] * mm(fk, g, LOW, IN)
    grad_k -= (2.0 * half_norm) * row_sum_k[:, None] * xk
    store_rows(gq_ptr + bh * L * D, grad_q, l0, end, D, BC, BD)
    store_rows(gk_ptr + bh * L * D, grad_k, l0, end, D, BC, BD)
    store_rows(gv_ptr + bh * L * DV, grad_v, l0, end, DV, BC, BV)


@triton.jit
def param_grad_pass(
    q_ptr, k_ptr, v_ptr, p_ptr, qmax_ptr, off_ptr, end_ptr, before_ptr, pad_ptr, heads,
    states_s_ptr, states_z_ptr, adj_s_ptr, adj_z_ptr, gn_ptr, gd_ptr, gp_ptr,
    L, M, D, DV, N, half_norm, span_chunks, table_ptr,
    HAS_PAD: tl.constexpr, ACT: tl.constexpr, FEPS: tl.constexpr,
    BC: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
    ACC: tl.constexpr, LOW: tl.constexpr, IN: tl.constexpr, IS_VARLEN: tl.constexpr = False,
):  # fmt: skip
    m0 = tl.program_id(0) * BM
    bh = tl.program_id(1).to(tl.int64)
    # This program's chunks; its partial gradient goes to slot (split, bh).
    split = tl.program_id(2)
    slot = split * tl.num_programs(1) + bh
    cols = m0 + tl.arange(0, BM)
    p = load_rows(p_ptr, m0, M, D, BM, BD, ACC)
    zero = tl.zeros((BC,), ACC)
    grad_p = tl.zeros((BM, BD), ACC)
    for c in range(split * span_chunks, tl.minimum(split * span_chunks + span_chunks, N)):
        l0, end = chunk_bounds(table_ptr, c, L, BC, IS_VARLEN)
        chunk = _backward_chunk(
            q_ptr, k_ptr, v_ptr, qmax_ptr, off_ptr, end_ptr, before_ptr, pad_ptr, gn_ptr, gd_ptr,
            bh, heads, c, l0, end, L, D, DV, N, HAS_PAD, BC, BD, BV, ACC, LOW, IN,
        )  # fmt: skip
        _rows, exists, real, xq, xk, v, gn, gd, m, top, to_query, to_end, grad_scores, _within = chunk
        fq, slope_q = _features(xq, p, zero, top, exists[:, None] & (cols[None, :] < M), ACT, FEPS, LOW, IN)
        fk, slope_k = _features(
            xk, p, half_norm * tl.sum(xk * xk, 1), m, real[:, None] & (cols[None, :] < M), ACT, FEPS, LOW, IN
        )
        base = (bh * N + c) * M
        g = load_rows(adj_s_ptr + base * DV, m0, M, DV, BM, BV, ACC)
        grad_log_q, grad_log_k = _grad_logs(
            states_s_ptr, states_z_ptr, adj_z_ptr, g, base, m0, M, DV, fq, slope_q, fk, slope_k,
            grad_scores, gn, gd, v, to_query, to_end, BM, BV, ACC, LOW, IN,
        )  # fmt: skip
        grad_p += mm(tl.trans(grad_log_q), xq, LOW, IN) + mm(tl.trans(grad_log_k), xk, LOW, IN)
    store_rows(gp_ptr + slot * M * D, grad_p, m0, M, D, BM, BD)


class _TritonCausal(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, q, k, v, rows, init_s, init_z, init_offset, half_norm, pad, eps, blocks, act, feps, bounds
    ):
        batch, heads, length, d = q.shape
        dv, m = v.shape[-1], rows.shape[0]
        bh = batch * heads
        acc_dtype = accumulation_dtype(q.dtype)
        acc = dict(device=q.device, dtype=acc_dtype)
        meta = dict(
            BC=blocks.rows,
            BM=blocks.features,
            BD=pow2(d),
            BV=pow2(dv),
            ACT=act,
            FEPS=feps,
            IS_VARLEN=bounds is not None,
            **compute_types(q.dtype),
        )
        chunk = meta["BC"]
        row_meta = {**{key: value for key, value in meta.items() if key != "BC"}, "BL": chunk}
        # Packed: chunks that stop at each boundary (a table the kernels read), one state per
        # (sequence, batch·head) in and out.
        packed = None if bounds is None else PackedTables(bounds, chunk, blocks.span, q.device)
        n = triton.cdiv(length, chunk) if packed is None else packed.rows.shape[0]
        sequences = 1 if packed is None else packed.sequences
        fallback = q.new_empty(0)  # (table arguments of unpacked launches, never read)
        table = fallback if packed is None else packed.rows
        seqs = fallback if packed is None else packed.sequence_rows
        qf, kf, vf, rows_c = flat(q), flat(k), flat(v), rows.contiguous()
        pad_arg = pad if pad is not None else qf
        has_pad = pad is not None
        start = None if init_offset is None else init_offset.reshape(-1).to(acc_dtype)
        if act == EXP.value:
            key_max = torch.empty(bh, length, **acc)
            row_pass[(n, bh)](
                kf, rows_c, key_max, 0, 0, kf, pad_arg, heads, kf, kf, kf, kf, kf, kf, kf,
                length, m, d, dv, half_norm, 0.0, table,
                MODE=ROW_MAX.value, HAS_PAD=has_pad, HAS_COL=False, **row_meta,
            )  # fmt: skip
            if packed is None:
                offsets, _ = key_offsets(key_max[..., None], causal=True, start=start)
            else:
                offsets, _ = _packed_offsets(key_max, packed, start)
            offsets = offsets.contiguous()
        else:
            # Generalized kernels are not stabilized: every offset is 0 (the wrapper brings an
            # initial state to those units).
            offsets = torch.zeros(bh, length, **acc)
        if packed is None:
            ends = offsets[:, torch.clamp(torch.arange(1, n + 1, device=q.device) * chunk, max=length) - 1]
            first = offsets[:, 0] if start is None else start
            befores = torch.cat([first[:, None], ends[:, :-1]], dim=1).contiguous()
        else:
            ends, befores = _packed_chunk_offsets(offsets, packed, start)
        ends = ends.contiguous()
        states_s = torch.empty(bh, n, m, dv, **acc)
        states_z = torch.empty(bh, n, m, **acc)
        final_s = torch.empty(sequences * bh, m, dv, **acc)
        final_z = torch.empty(sequences * bh, m, **acc)
        has_init = init_s is not None
        init_s_arg = init_s.reshape(-1, m, dv).to(acc_dtype).contiguous() if has_init else final_s
        init_z_arg = init_z.reshape(-1, m).to(acc_dtype).contiguous() if has_init else final_z
        features_grid = (triton.cdiv(m, meta["BM"]), bh)
        state_grid = features_grid if packed is None else (*features_grid, sequences)
        state_pass[state_grid](
            kf, vf, rows_c, ends, befores, pad_arg, heads, init_s_arg, init_z_arg,
            states_s, states_z, final_s, final_z,
            length, m, d, dv, n, half_norm, table, seqs, HAS_INIT=has_init, HAS_PAD=has_pad, **meta,
        )  # fmt: skip
        out = torch.empty(bh, length, dv, **acc)
        inverse = torch.empty(bh, length, **acc)
        query_max = torch.empty(bh, length, **acc)
        output_pass[(n, bh)](
            qf, kf, vf, rows_c, offsets, befores, pad_arg, heads, states_s, states_z, out, inverse, query_max,
            length, m, d, dv, n, half_norm, eps, table, HAS_PAD=has_pad, **meta,
        )  # fmt: skip
        # The inputs as given (their flat copies above are made without a graph): a
        # differentiable recomputation needs them connected.
        ctx.save_for_backward(
            q, k, v, rows, init_s, init_z, init_offset, offsets, ends, befores, states_s, states_z, out,
            inverse, query_max, pad,
        )  # fmt: skip
        ctx.blocks, ctx.eps, ctx.act, ctx.feps = blocks, eps, act, feps
        ctx.bounds, ctx.table, ctx.seqs, ctx.sequences = bounds, table, seqs, sequences
        ctx.shape, ctx.meta, ctx.half_norm, ctx.has_init = (
            (batch, heads, length, d, dv, m, n),
            meta,
            half_norm,
            has_init,
        )
        # The final state is in units of the last position's (finite) offset (of each sequence).
        if packed is None:
            final_offset = offsets[:, -1].clone()
        else:
            final_offset = offsets[:, packed.lasts].t().contiguous()
        ctx.mark_non_differentiable(final_offset)
        states = (-1, heads)  # (B, H), or (N, H) packed (B = 1)
        return (
            out.reshape(batch, heads, length, dv),
            final_s.reshape(*states, m, dv),
            final_z.reshape(*states, m),
            final_offset.reshape(states),
        )

    @staticmethod
    def backward(ctx, grad_out, grad_final_s, grad_final_z, _grad_offset):
        (q, k, v, rows, init_s, init_z, init_offset, offsets, ends, befores, states_s, states_z, out, inverse,
         query_max, pad) = ctx.saved_tensors  # fmt: skip
        batch, heads, length, d, dv, m, n = ctx.shape
        meta, half_norm = ctx.meta, ctx.half_norm
        if wants_graph():  # create_graph=True: a PyTorch recomputation (ops.double_backward)

            def recompute(q, k, v, rows, init_s, init_z) -> tuple[Tensor, Tensor, Tensor]:
                return _causal_graph(
                    q, k, v, rows, init_s, init_z, init_offset, offsets, pad, half_norm, ctx.act, ctx.feps,
                    ctx.eps, meta["BC"], ctx.bounds,
                )  # fmt: skip

            inputs = (q, k, v, rows, init_s, init_z)
            grads = graph_backward(
                inputs, ctx.needs_input_grad[:6], recompute, (grad_out, grad_final_s, grad_final_z)
            )
            return (*grads, *(None,) * 8)
        qf, kf, vf, rows = flat(q), flat(k), flat(v), rows.contiguous()
        bh = batch * heads
        table, seqs, states = ctx.table, ctx.seqs, ctx.sequences * bh
        acc = dict(device=qf.device, dtype=out.dtype)
        grad_num = (flat(grad_out).to(out.dtype) * inverse[..., None]).contiguous()
        grad_den = -(grad_num * out).sum(-1).contiguous()
        has_final = grad_final_s is not None or grad_final_z is not None
        final_gs = (
            torch.zeros(states, m, dv, **acc)
            if grad_final_s is None
            else grad_final_s.reshape(states, m, dv).to(out.dtype)
        ).contiguous()
        final_gz = (
            torch.zeros(states, m, **acc)
            if grad_final_z is None
            else grad_final_z.reshape(states, m).to(out.dtype)
        ).contiguous()
        adj_s = torch.empty_like(states_s)
        adj_z = torch.empty_like(states_z)
        init_gs = torch.empty(states, m, dv, **acc)
        init_gz = torch.empty(states, m, **acc)
        features_grid = (triton.cdiv(m, meta["BM"]), bh)
        state_grid = features_grid if ctx.bounds is None else (*features_grid, ctx.sequences)
        adjoint_pass[state_grid](
            qf, rows, query_max, offsets, ends, befores, grad_num, grad_den, final_gs, final_gz,
            adj_s, adj_z, init_gs, init_gz, length, m, d, dv, n, table, seqs,
            HAS_FINAL_GRAD=has_final, **meta,
        )  # fmt: skip
        pad_arg = pad if pad is not None else qf
        grad_q = torch.empty(bh, length, d, **acc)
        grad_k = torch.empty(bh, length, d, **acc)
        grad_v = torch.empty(bh, length, dv, **acc)
        common = (
            qf,
            kf,
            vf,
            rows,
            query_max,
            offsets,
            ends,
            befores,
            pad_arg,
            heads,
            states_s,
            states_z,
            adj_s,
            adj_z,
        )
        input_grad_pass[(n, bh)](
            *common, grad_num, grad_den, grad_q, grad_k, grad_v,
            length, m, d, dv, n, half_norm, table, HAS_PAD=pad is not None, **meta,
        )  # fmt: skip
        blocks = ctx.blocks
        span_chunks = blocks.span // blocks.rows
        splits = triton.cdiv(n, span_chunks)  # (unpacked: blocks.splits(length))
        grad_p = torch.empty(splits, bh, m, d, **acc)
        param_grad_pass[(*features_grid, splits)](
            *common, grad_num, grad_den, grad_p,
            length, m, d, dv, n, half_norm, span_chunks, table, HAS_PAD=pad is not None, **meta,
        )  # fmt: skip
        shape = (batch, heads)
        return (
            grad_q.reshape(*shape, length, d),
            grad_k.reshape(*shape, length, d),
            grad_v.reshape(*shape, length, dv),
            grad_p.sum((0, 1)),
            init_gs.reshape(-1, heads, m, dv) if ctx.has_init else None,
            init_gz.reshape(-1, heads, m) if ctx.has_init else None,
            *(None,) * 8,
        )


def _packed_offsets(key_max: Tensor, packed: PackedTables, start: Tensor | None) -> tuple[Tensor, Tensor]:
    """Causal key offsets ``(B·H, T)`` of a packed row from its keys' row maxima: running maxima
    that restart at each sequence, at least the offset ``start`` (``(N·B·H,)``) of the state a
    sequence continues (as :func:`~performers.ops.numerics.key_offsets` per sequence)."""
    seq = packed.position_sequence
    floor = None if start is None else start.reshape(packed.sequences, -1).t()[:, seq]
    return packed_key_offsets(key_max, seq, floor)


def _packed_chunk_offsets(
    offsets: Tensor, packed: PackedTables, start: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Each chunk's offsets ``(B·H, chunks)``: at its last position (``ends``) and of the state
    entering it (``befores``): the previous chunk's end inside a sequence, and at a sequence's
    first chunk the offset of its initial state, else of its first key."""
    ends = offsets[:, packed.chunk_last]
    if start is None:
        entering = offsets[:, packed.rows[:, 0].long()]
    else:
        entering = start.reshape(packed.sequences, -1).t()[:, packed.rows[:, 2].long()]
    previous = torch.cat([ends[:, :1], ends[:, :-1]], dim=1)
    befores = torch.where(packed.chunk_first, entering.to(ends.dtype), previous)
    return ends, befores.contiguous()


def _causal_graph(
    q: Tensor, k: Tensor, v: Tensor, rows: Tensor, init_s: Tensor | None, init_z: Tensor | None,
    init_offset: Tensor | None, offsets: Tensor, pad: Tensor | None, half_norm: float, act: int,
    feature_eps: float, eps: float, chunk: int, bounds: tuple[int, ...] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """:class:`_TritonCausal`'s ``(out, kv, normalizer)`` in differentiable PyTorch operations:
    the kernels' features in the forward's (detached) offsets ``(B·H, L)`` (all 0 for the
    generalized kernels), then the chunked algorithm of the kernels with every chunk state
    from one product (:func:`~performers.ops.numerics.state_carry_factors`); a packed call
    (``bounds``) as one recomputation per sequence, its states stacked along the batch."""
    if bounds is not None:
        sizes = [end - start for start, end in itertools.pairwise(bounds)]
        results = []
        for i, (qi, ki, vi, off) in enumerate(
            zip(*(t.split(sizes, dim=2) for t in (q, k, v)), offsets.split(sizes, dim=1), strict=True)
        ):
            inits = (
                (None,) * 3
                if init_s is None
                else (init_s[i : i + 1], init_z[i : i + 1], init_offset[i : i + 1])
            )
            results.append(
                _causal_graph(
                    qi, ki, vi, rows, *inits, off.contiguous(), pad, half_norm, act, feature_eps, eps, chunk
                )
            )
        out, kv, normalizer = zip(*results, strict=True)
        return torch.cat(out, dim=2), torch.cat(kv, dim=0), torch.cat(normalizer, dim=0)
    acc = accumulation_dtype(q.dtype)
    q, k, v, rows = (t.to(acc) for t in (q, k, v, rows))
    b, h, length = q.shape[:3]
    offsets = offsets.reshape(b, h, length)
    stabilized = act == EXP.value
    q_features, k_features = graph_features(
        q, k, rows, pad, half_norm, act, feature_eps, offsets[..., None] if stabilized else None
    )
    m, e = rows.shape[0], v.shape[-1] + 1
    if init_s is None:
        state = q.new_zeros(b, h, m, e)
        state_offset = offsets[..., 0]
    else:
        state = torch.cat([init_s, init_z.unsqueeze(-1)], dim=-1).to(acc)
        state_offset = init_offset.reshape(b, h).to(acc)
    # Whole chunks: the tail is zero features (nothing read, nothing added) at the last offset.
    extra = (-length) % chunk
    values = with_ones(v)
    if extra:
        q_features, k_features, values = (
            F.pad(t, (0, 0, 0, extra)) for t in (q_features, k_features, values)
        )
        offsets = torch.cat([offsets, offsets[..., -1:].expand(b, h, extra)], dim=-1)
    n = (length + extra) // chunk
    qc, kc, vc = (t.reshape(b, h, n, chunk, t.shape[-1]) for t in (q_features, k_features, values))
    chunk_offsets = offsets.reshape(b, h, n, chunk)
    within, to_end, _, to_query = chunk_rescale_factors(chunk_offsets, state_offset)
    summaries = torch.matmul(kc.transpose(-2, -1), vc * to_end)  # (B, H, n, M, E)
    carry = state_carry_factors(chunk_offsets[..., -1], state_offset)  # (B, H, n+1, n+1)
    sources = torch.cat([state.unsqueeze(2), summaries], dim=2).flatten(-2)
    carried = torch.matmul(carry, sources).view(b, h, n + 1, m, e)
    read = torch.matmul(torch.matmul(qc, kc.transpose(-2, -1)) * within, vc)
    read = read + torch.matmul(qc, carried[:, :, :n]) * to_query
    read = read.reshape(b, h, n * chunk, e)[:, :, :length]
    out = read[..., :-1] * safe_reciprocal(read[..., -1], eps).unsqueeze(-1)
    final = carried[:, :, n]
    return out, final[..., :-1], final[..., -1]


def triton_causal_attention(
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
    initial_kv: Tensor | None = None,
    initial_normalizer: Tensor | None = None,
    initial_offset: Tensor | None = None,
    blocks: Blocks | None = None,
    cu_seqlens: tuple[int, ...] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Causal FAVOR attention (Triton, chunked) with features ``exp(P(√s·x) − a·s‖x‖²/2 − c)``
    (``activation="exp"``) or ``f(P(√s·x)) + feature_eps`` (``"relu"``, ``"elu"``, ``"abs"``,
    ``"plain-exp"``).

    Args:
        q, k: ``(B, H, L, D)``; v: ``(B, H, L, Dv)``; one floating dtype.
        rows: ``P`` ``(M', D)`` (differentiable); scale: ``√s``.
        activation, norm (``a``), feature_eps: the feature map, as in
            :func:`~performers.ops.triton.bidirectional.triton_bidirectional_attention`.
        key_padding_mask: ``(B, L)`` bool, True marks a padded key.
        eps: denominator guard (default: the accumulation dtype's smallest normal number).
        initial_kv ``(B, H, M', Dv)``, initial_normalizer ``(B, H, M')`` (differentiable) and
            initial_offset ``(B, H)``: the state of a preceding prefix in the units of
            ``P x̃ − a‖x̃‖²/2`` (without the map's constant ``c``), or None.
        blocks: tile sizes; ``blocks.rows`` is the chunk length.
        cu_seqlens: a packed batch's boundaries ``(0, …, L)`` as ints (checked by the caller):
            ``q``, ``k``, ``v`` are ``(1, H, L, ·)`` holding N sequences back to back, each
            causal within itself from its own state (initial and final states ``(N, H, ·)``,
            offsets ``(N, H)``), every pass one launch for all sequences. No padding then.

    Returns:
        ``(out (B, H, L, Dv), kv (B, H, M', Dv), normalizer (B, H, M'), log_offset (B, H))``:
        the output and the final state (differentiable), in the same units (offset 0 for the
        generalized kernels).
    """
    if (initial_kv is None) != (initial_offset is None) or (initial_kv is None) != (
        initial_normalizer is None
    ):
        raise ValueError("initial_kv, initial_normalizer and initial_offset are given together or not at all")
    act = activation_code(activation)
    acc = accumulation_dtype(q.dtype)
    eps = kernel_eps(eps, acc)
    pad = None if key_padding_mask is None else key_padding_mask.to(torch.int8).contiguous()
    scaled_rows = (rows * scale).to(acc)
    offset = None if initial_offset is None else initial_offset.detach()
    if offset is not None and act != EXP.value:
        # Generalized features are in units of exp(0): bring the state there.
        factor = torch.exp(offset.to(acc))
        initial_kv, initial_normalizer = (
            initial_kv * factor[..., None, None],
            initial_normalizer * factor[..., None],
        )
        offset = torch.zeros_like(factor)
    half_norm = 0.5 * norm * scale * scale if act == EXP.value else 0.0
    blocks = blocks or Blocks.for_dims(q.shape[-1], v.shape[-1], q.dtype)
    bounds = None if cu_seqlens is None else tuple(int(b) for b in cu_seqlens)
    return _TritonCausal.apply(
        q, k, v, scaled_rows, initial_kv, initial_normalizer, offset, half_norm, pad, eps, blocks, act,
        float(feature_eps), bounds,
    )  # fmt: skip
