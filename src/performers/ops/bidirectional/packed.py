"""Packed bidirectional linear attention without a loop over sequences (``cu_seqlens``).

Query ``i`` of sequence ``s`` reads ``q'_i K'_sᵀ[V_s 1] / …``: one key summary per sequence,
``(N, H, M', Dv+1)``, summed from the chunk partial products of the (chunk, sequence) pairs that
overlap (``≤ T/C + N`` of them; :func:`performers.ops.causal.packed.packed_final_states`), then
read by every query through the same pairs — no ``T×M'×Dv`` tensor, no loop over sequences.
The stabilizers are those of the generic bidirectional path, per sequence: each feature's
largest key log of the sequence moves to that sequence's queries (exact), so every sequence's
largest key term is 1 (:func:`performers.ops.generic_features.attention_features`).

Serves kernels without data-dependent parameters (FAVOR++'s bidirectional ``A`` pools a whole
sequence: those packed calls run one call per sequence). Tested against the per-sequence loop
(``tests/ops/test_packed_causal.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from performers.ops.call import FavorCall
from performers.ops.causal.packed import packed_final_states, packed_layout, packed_sequence_reads
from performers.ops.features import stabilize_queries
from performers.ops.numerics import guarded_divide, with_ones

__all__ = ["packed_bidirectional_favor_attention"]


def packed_bidirectional_favor_attention(call: FavorCall) -> Tensor:
    """``(1, H, T, Dv)`` in ``call.out_dtype`` for a packed bidirectional call whose kernel has no
    data-dependent parameters (features materialized, differentiated by autograd)."""
    bounds = call.cu_seqlens
    if bounds is None or call.kernel.parameters is not None:
        raise ValueError("packed_bidirectional_favor_attention takes packed calls of parameter-free kernels")
    layout = packed_layout(bounds, call.q.device)
    q, k, v = call.compute_inputs(False)
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    sequences, seq = layout.sequences, layout.seq
    with torch.autocast(device_type=q.device.type, enabled=False):
        w = None if call.projection is None else call.projection.to(q.dtype)
        q_map, k_map = call.kernel(q * call.input_scale, w), call.kernel(k * call.input_scale, w)
        if q_map.log is not None and k_map.log is not None:
            # Each feature's largest key log of a sequence, moved to its queries (exact).
            k_log = k_map.log.detach()
            shape = (*k_log.shape[:2], sequences, k_log.shape[-1])
            index = seq[None, None, :, None].expand_as(k_log)
            column = k_log.new_full(shape, -math.inf).scatter_reduce(2, index, k_log, "amax")
            column = torch.nan_to_num(column, neginf=0.0).index_select(2, seq)
            q_map = q_map._replace(log=q_map.log + column)
            k_map = k_map._replace(log=k_map.log - column)
        q_features, k_features = stabilize_queries(q_map), k_map.materialize()
        length = q.shape[2]
        chunk = max(1, min(call.chunk_size, length))
        pad = (-length) % chunk
        qf, kf, va = (F.pad(t, (0, 0, 0, pad)) for t in (q_features, k_features, with_ones(v)))
        seq_chunks = layout.padded_seq(length + pad).reshape(-1, chunk)
        ones = qf.new_ones(1, qf.shape[1], length + pad)
        summaries = packed_final_states(kf, va, ones, seq_chunks, sequences)  # (N, H, M', Dv+1)
        reads = packed_sequence_reads(qf, summaries, ones, seq_chunks, sequences)[:, :, :length]
        out = guarded_divide(reads[..., :-1], reads[..., -1], call.eps)
    return out.to(call.out_dtype)
