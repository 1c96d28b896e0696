r"""Packed causal linear attention without a loop over sequences (``cu_seqlens``).

A packed row ``(1, H, T, ·)`` holds ``N`` sequences back to back; causal attention must restart
at each boundary: query ``i`` of sequence ``s`` reads the keys ``j ≤ i`` of ``s`` only, and the
stabilizer offsets (running key maxima) and the data-dependent map parameters (FAVOR++'s ``A``)
are those of ``s`` alone. This module runs the chunked algorithm of
:mod:`performers.ops.causal.generic` over the whole row with every cross-position factor
masked by "same sequence" — the prefix sums restart at each boundary — so the cost is that of
one unpacked call on ``T`` positions, whatever ``N``:

* each position carries its sequence id ``seq`` (:class:`PackedLayout`; positions that pad the
  row to whole chunks get the sentinel ``N``);
* the state entering chunk ``c`` holds only keys of the sequence of the chunk's first position
  ``S_c`` (it is empty when a boundary falls on the chunk edge): a chunk's summary keeps only
  the keys of ``S_{c+1}``, and the state carries from chunk ``c`` to ``c+1`` only if
  ``S_c = S_{c+1}`` (:func:`packed_chunk_masks`);
* a query reads the carried state only if it belongs to ``S_c``, and the intra-chunk block is
  masked causal *and* same-sequence;
* key offsets are running maxima that restart at each boundary (:func:`segment_cummax`, no
  loop: a cumulative maximum of ranks lifted by sequence id).

Masking is exact: a masked factor is an exact 0, and the factors that survive are those of the
per-sequence computation (offset differences within one sequence). Per-sequence initial states
enter as one extra read per query, ``q'_i S_{seq(i)} exp(o_s − m_i)``, and final states are
segment sums of chunk partial products (:func:`packed_final_states`): neither materializes a
``T×M×Dv`` tensor, both are gathers over the (chunk, sequence) pairs that overlap, ``≤ T/C + N``
of them.

The fused path (:mod:`performers.ops.causal.fused`) takes the same masks
(:func:`packed_chunk_masks`) and offsets (:func:`packed_key_offsets`) into its segmented
Function; calls with states take the generic form here (:func:`packed_causal_linear_attention`
on :func:`packed_attention_features`). Both are tested against the per-sequence loop, which is
the reference (``tests/ops/test_packed.py``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from performers.ops.causal.generic import decayed_prefix_scan
from performers.ops.favor_plus_plus import favor_plus_plus_parameters
from performers.ops.features import (
    FeatureMapOutput,
    _StabilizedExpFeatures,
    stabilize_queries,
    stabilized_exp_features,
)
from performers.ops.kernels import Kernel
from performers.ops.numerics import (  # (the offsets live beside key_offsets: the Triton kernels share them)
    chunk_rescale_factors,
    guarded_divide,
    packed_key_offsets,
    segment_cummax,
    with_ones,
)
from performers.ops.state import DEFAULT_CHUNK_SIZE, FavorState

__all__ = [
    "PackedLayout",
    "packed_attention_features",
    "packed_causal_linear_attention",
    "packed_chunk_masks",
    "packed_final_states",
    "packed_key_offsets",
    "packed_layout",
    "packed_sequence_reads",
    "segment_cummax",
    "sequence_groups",
    "serves_kernel",
]


@dataclass(frozen=True)
class PackedLayout:
    """Where the sequences of a packed row lie.

    Attributes:
        bounds: the checked ``cu_seqlens`` ``(0, …, T)``.
        seq: ``(T,)`` int64, the sequence of each position (non-decreasing).
        starts, lasts: ``(N,)`` int64, the first and last position of each sequence.
    """

    bounds: tuple[int, ...]
    seq: Tensor
    starts: Tensor
    lasts: Tensor

    @property
    def sequences(self) -> int:
        """``N``, also the sentinel id of positions that pad the row to whole chunks."""
        return len(self.bounds) - 1

    def padded_seq(self, length: int) -> Tensor:
        """``seq`` extended with the sentinel ``N`` to ``length`` positions."""
        return F.pad(self.seq, (0, length - self.seq.shape[0]), value=self.sequences)


def sequence_groups(bounds: tuple[int, ...], max_tokens: int) -> list[tuple[int, int]]:
    """Consecutive runs of whole sequences, ``[(a, b), …]`` (sequences ``a`` to ``b - 1``), each
    holding at most ``max_tokens`` positions unless it is one sequence longer than that; in
    order, covering every sequence once.

    >>> sequence_groups((0, 3, 5, 9, 10), 5)
    [(0, 2), (2, 4)]
    """
    groups: list[tuple[int, int]] = []
    first = 0
    for last in range(1, len(bounds) - 1):
        if bounds[last + 1] - bounds[first] > max_tokens:
            groups.append((first, last))
            first = last
    groups.append((first, len(bounds) - 1))
    return groups


def packed_layout(bounds: tuple[int, ...], device: torch.device) -> PackedLayout:
    """The :class:`PackedLayout` of checked boundaries (built on the host, moved once)."""
    lengths = torch.tensor([b - a for a, b in itertools.pairwise(bounds)], dtype=torch.int64)
    seq = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    starts = torch.tensor(bounds[:-1], dtype=torch.int64)
    lasts = torch.tensor(bounds[1:], dtype=torch.int64) - 1
    return PackedLayout(bounds, seq.to(device), starts.to(device), lasts.to(device))


def packed_chunk_masks(seq_chunks: Tensor, after: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Which factors of the chunked causal algorithm stay within one sequence.

    Args:
        seq_chunks: ``(n, C)`` sequence ids of ``n`` consecutive chunks.
        after: the sequence id of the position after the last chunk (a 1-element tensor; the
            sentinel past the row's end).

    Returns (bool): ``pairs`` ``(n, C, C)`` — key ``j`` is at or before query ``i`` in a chunk
    and of its sequence (the ``pairs`` of :func:`chunk_rescale_factors`); ``to_end``
    ``(n, C, 1)`` — key ``j`` belongs in the chunk's summary, i.e. to ``S_{c+1}``, the sequence
    the next chunk's state holds; ``to_query`` ``(n, C, 1)`` — query ``i`` reads the state
    entering its chunk (it belongs to ``S_c``); ``carry`` ``(n+1, n+1)`` — for the sources
    ``[incoming state, summaries…]`` of :func:`performers.ops.numerics.state_carry_factors`,
    source ``i`` reaches the state entering chunk ``j`` (row ``n``: after the last), i.e. their
    sequences agree.
    """
    first = seq_chunks[:, 0]
    slots = torch.cat([first, after.reshape(1)])
    pairs = seq_chunks.unsqueeze(-1) == seq_chunks.unsqueeze(-2)
    pairs.logical_and_(torch.ones_like(pairs[0]).tril_())
    to_end = (seq_chunks == slots[1:, None]).unsqueeze(-1)
    to_query = (seq_chunks == first[:, None]).unsqueeze(-1)
    carry = slots.unsqueeze(-1) == slots.unsqueeze(-2)
    return pairs, to_end, to_query, carry


def _chunk_sequence_pairs(seq_chunks: Tensor, sequences: int) -> tuple[Tensor, Tensor]:
    """The (chunk, sequence) pairs that overlap, sentinel excluded: ``≤ n + N`` of them."""
    low, high = seq_chunks[:, 0], seq_chunks[:, -1].clamp_max(sequences - 1)
    counts = (high - low + 1).clamp_min(0)
    chunk_index = torch.repeat_interleave(torch.arange(len(counts), device=seq_chunks.device), counts)
    before = torch.cumsum(counts, 0) - counts
    within = torch.arange(chunk_index.shape[0], device=seq_chunks.device) - before[chunk_index]
    return chunk_index, low[chunk_index] + within


def packed_sequence_reads(
    q_features: Tensor, states: Tensor, factor: Tensor, seq_chunks: Tensor, sequences: int
) -> Tensor:
    """``q'_i · S_{seq(i)} · factor_i`` for every position: ``q_features`` ``(1, H, n·C, M)``,
    ``states`` ``(N, H, M, E)``, ``factor`` ``(1, H, n·C)`` → ``(1, H, n·C, E)``, through the
    overlapping (chunk, sequence) pairs (no ``T×M×E`` tensor)."""
    n, chunk = seq_chunks.shape
    h, m, e = q_features.shape[1], q_features.shape[-1], states.shape[-1]
    chunks, seqs = _chunk_sequence_pairs(seq_chunks, sequences)
    # index_select, not advanced indexing: its backward is an index_add, not a slower index_put.
    qc = q_features[0].reshape(h, n, chunk, m).index_select(1, chunks)  # (H, K, C, M)
    read = torch.matmul(qc, states.index_select(0, seqs).transpose(0, 1))  # (H, K, C, E)
    # torch.where, not a product: the factor of another sequence's position may be inf.
    weight = torch.where(
        seq_chunks[chunks] == seqs[:, None], factor[0].reshape(h, n, chunk).index_select(1, chunks), 0.0
    )
    read = read * weight.unsqueeze(-1)
    return read.new_zeros(h, n, chunk, e).index_add(1, chunks, read).reshape(1, h, n * chunk, e)


def packed_final_states(
    k_features: Tensor, values_aug: Tensor, weight: Tensor, seq_chunks: Tensor, sequences: int
) -> Tensor:
    """Per-sequence sums ``Σ_{j∈s} k'_j [v_j 1]ᵀ weight_j``: ``k_features`` ``(1, H, n·C, M)``,
    ``values_aug`` ``(1, H, n·C, E)``, ``weight`` ``(1, H, n·C)`` → ``(N, H, M, E)``: one
    ``M×E`` product per overlapping (chunk, sequence) pair, summed per sequence (``index_add``)."""
    n, chunk = seq_chunks.shape
    h, m, e = k_features.shape[1], k_features.shape[-1], values_aug.shape[-1]
    chunks, seqs = _chunk_sequence_pairs(seq_chunks, sequences)
    kc = k_features[0].reshape(h, n, chunk, m).index_select(1, chunks)  # (H, K, C, M)
    # torch.where, not a product: the weight of another sequence's position may be inf.
    mask = torch.where(
        seq_chunks[chunks] == seqs[:, None], weight[0].reshape(h, n, chunk).index_select(1, chunks), 0.0
    )
    vc = values_aug[0].reshape(h, n, chunk, e).index_select(1, chunks) * mask.unsqueeze(-1)
    sums = torch.matmul(kc.transpose(-2, -1), vc)  # (H, K, M, E)
    return sums.new_zeros(h, sequences, m, e).index_add(1, seqs, sums).transpose(0, 1)


def packed_chunked_reads(
    q_features: Tensor, k_features: Tensor, values_aug: Tensor, offsets: Tensor, seq_ext: Tensor, chunk: int
) -> Tensor:
    """Numerator and denominator ``(1, H, L, E)`` of packed causal attention over ``L`` positions,
    a multiple of ``chunk``, from empty states (differentiable by autograd).

    ``offsets`` ``(1, H, L)``: key offsets restarting per sequence; ``seq_ext`` ``(L+1,)``: the
    sequence ids, then the sentinel. The chunked algorithm of
    :mod:`performers.ops.causal.generic` with every factor masked (:func:`packed_chunk_masks`).
    """
    b, h, length, m = q_features.shape
    e = values_aug.shape[-1]
    n = length // chunk
    qc, kc = q_features.reshape(b, h, n, chunk, m), k_features.reshape(b, h, n, chunk, m)
    vc = values_aug.reshape(b, h, n, chunk, e)
    oc = offsets.reshape(b, h, n, chunk)
    pairs, at_end, at_query, carry = packed_chunk_masks(seq_ext[:-1].reshape(n, chunk), seq_ext[-1:])
    within, to_end, decay, to_query = chunk_rescale_factors(oc, oc[..., 0, 0], pairs)
    # State c → c+1 carries only within one sequence (the sub-diagonal of `carry`).
    decay = decay * torch.diagonal(carry, offset=-1)
    scores = torch.matmul(qc, kc.transpose(-2, -1)) * within
    summaries = torch.matmul(kc.transpose(-2, -1), vc * (to_end * at_end))
    prefix, _ = decayed_prefix_scan(summaries, decay, summaries.new_zeros(b, h, m, e))
    reads = torch.matmul(qc, prefix) * (to_query * at_query) + torch.matmul(scores, vc)
    return reads.reshape(b, h, length, e)


def packed_causal_linear_attention(
    q_features: Tensor,
    k_features: Tensor,
    values: Tensor,
    *,
    layout: PackedLayout,
    key_log_offsets: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    initial_state: FavorState | None = None,
    return_state: bool = False,
    eps: float | None = None,
) -> Tensor | tuple[Tensor, FavorState]:
    """:func:`performers.ops.causal.generic.causal_linear_attention` of a packed row, restarting
    at each sequence (see the module docstring), with one state per sequence in and out.

    Args:
        q_features, k_features: ``(1, H, T, M)``; values: ``(1, H, T, Dv)``.
        layout: the row's sequences.
        key_log_offsets: ``(1, H, T)`` offsets restarting per sequence (from
            :func:`packed_key_offsets`, floored by the initial states' offsets), or None (all 0).
        chunk_size, eps: as in ``causal_linear_attention``.
        initial_state: ``(N, H, M, Dv)`` sums (and offsets ``(N, H)``) each sequence continues.
        return_state: also return the ``N`` final states.
    """
    b, h, length, _ = k_features.shape
    chunk = max(1, min(chunk_size, length))
    padded = -(-length // chunk) * chunk
    seq_ext = layout.padded_seq(padded + 1)
    values_aug = with_ones(values)
    offsets = key_log_offsets if key_log_offsets is not None else k_features.new_zeros(b, h, length)
    pad = padded - length
    qf, kf, va = (F.pad(t, (0, 0, 0, pad)) for t in (q_features, k_features, values_aug))
    offs = F.pad(offsets, (0, pad))  # the tail keys are zero features, masked out anyway
    reads = packed_chunked_reads(qf, kf, va, offs, seq_ext, chunk)
    seq_chunks = seq_ext[:-1].reshape(-1, chunk)
    n_seq = layout.sequences
    init = None
    if initial_state is not None:
        init = torch.cat([initial_state.kv, initial_state.normalizer.unsqueeze(-1)], dim=-1).to(kf.dtype)
        # Query i reads its sequence's state in units exp(m_i) (offsets are floored by the
        # state's offset, so this factor is <= 1 for stabilized features).
        init_offset = initial_state.log_offset.to(kf.dtype)  # (N, H)
        factor = torch.exp(init_offset.t()[:, seq_chunks.flatten().clamp_max(n_seq - 1)].unsqueeze(0) - offs)
        reads = reads + packed_sequence_reads(qf, init, factor, seq_chunks, n_seq)
    reads = reads[:, :, :length]
    out = guarded_divide(reads[..., :-1], reads[..., -1], eps)
    if not return_state:
        return out
    # Each sequence's state in units of its last key's offset (as the unpacked call returns it).
    final_offset = offsets[0][:, layout.lasts]  # (H, N)
    weight = torch.exp(offs - final_offset[:, seq_chunks.flatten().clamp_max(n_seq - 1)].unsqueeze(0))
    finals = packed_final_states(kf, va, weight, seq_chunks, n_seq)
    if init is not None:
        finals = finals + init * torch.exp(init_offset - final_offset.t())[..., None, None]
    return out, FavorState(finals[..., :-1], finals[..., -1], final_offset.t().contiguous())


def serves_kernel(kernel: Kernel) -> bool:
    """Whether this module computes ``kernel``'s per-sequence parameters: maps without
    data-dependent parameters, and FAVOR++'s (whose causal ``A`` reads a sequence's first
    position only). A registered map with other parameters runs one call per sequence."""
    return kernel.parameters is None or kernel.parameters is favor_plus_plus_parameters


def _per_sequence_parameters(
    parameters: Callable[..., Tensor], q: Tensor, k: Tensor, layout: PackedLayout, params: Tensor | None
) -> Tensor:
    """The map's causal parameters ``(N, H)`` (``parameters``: its ``Kernel.parameters``) of each
    sequence, from scaled ``q``, ``k``.

    FAVOR++'s causal ``A`` reads the first position of a sequence only
    (:mod:`performers.ops.favor_plus_plus`; :func:`serves_kernel` admits no other parameterized
    map), so the first positions, as a batch of ``N`` one-position rows, give every sequence's
    parameters in one call. NaN rows of a continued state (no real key yet) are filled from the
    fresh ones."""
    first_q = q[0][:, layout.starts].transpose(0, 1).unsqueeze(2)  # (N, H, 1, D)
    first_k = k[0][:, layout.starts].transpose(0, 1).unsqueeze(2)
    fresh = parameters(first_q, first_k, causal=True, key_padding_mask=None)
    return fresh if params is None else torch.where(torch.isnan(params), fresh, params)


def _squeeze_positions(features: FeatureMapOutput) -> FeatureMapOutput:
    return FeatureMapOutput(*(None if t is None else t.squeeze(-2) for t in features))


def packed_attention_features(
    kernel: Kernel,
    q: Tensor,
    k: Tensor,
    projection: Tensor | None,
    input_scale: float,
    *,
    layout: PackedLayout,
    initial_offset: Tensor | None,
    params: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """:func:`performers.ops.generic_features.attention_features` (causal) of a packed row: key
    offsets restart per sequence and data-dependent parameters are per sequence.

    Args:
        kernel, projection, input_scale: as there; q, k: ``(1, H, T, D)`` in the compute dtype.
        layout: the row's sequences.
        initial_offset: ``(N, H)`` offsets of the states the sequences continue, or None.
        params: ``(N, H)`` parameters of those states (NaN rows still open), or None.

    Returns:
        ``(q_features, k_features (1, H, T, M'), offsets (1, H, T) or None, params (N, H) or None)``.
    """
    seq = layout.seq
    w = None if projection is None else projection.to(q.dtype)
    floor = None if initial_offset is None else initial_offset.to(q.dtype).t()[:, seq].unsqueeze(0)
    if kernel.exp_form is not None and w is not None:
        form = kernel.exp_form(w)
        q_features, _ = stabilized_exp_features(q, form, scale=input_scale, role="query")
        internal_floor = None if floor is None else floor + form.log_const

        def key_shift(log: Tensor) -> tuple[Tensor, Tensor]:
            # Internal logs leave out the map's constant c; callers' offsets include it.
            offsets, _ = packed_key_offsets(log.amax(dim=-1), seq, internal_floor)
            return offsets.unsqueeze(-1), offsets - form.log_const

        k_features, offsets = _StabilizedExpFeatures.apply(
            k, form.rows, input_scale, form.norm, key_shift, None
        )
        return q_features, k_features, offsets, None
    q_scaled, k_scaled = q * input_scale, k * input_scale
    if kernel.parameters is not None:
        params = _per_sequence_parameters(kernel.parameters, q_scaled, k_scaled, layout, params)
        # Rows still open have no real key: any finite value gives them zero weight.
        per_position = torch.nan_to_num(params, nan=0.0).t()[:, seq].unsqueeze(0)  # (1, H, T)
        # Each position as a one-position row, so the (1, H, T) parameters broadcast as (B, H).
        q_map = _squeeze_positions(kernel(q_scaled.unsqueeze(-2), w, per_position))
        k_map = _squeeze_positions(kernel(k_scaled.unsqueeze(-2), w, per_position))
    else:
        q_map, k_map = kernel(q_scaled, w), kernel(k_scaled, w)
    q_features = stabilize_queries(q_map)
    if k_map.log is None:
        return q_features, k_map.materialize(), None, params
    offsets, _ = packed_key_offsets(k_map.log.detach().amax(dim=-1), seq, floor)
    magnitude = torch.exp(k_map.log - offsets.unsqueeze(-1))
    k_features = magnitude if k_map.linear is None else k_map.linear * magnitude
    return q_features, k_features, offsets, params
