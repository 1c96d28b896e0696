"""Causal FAVOR attention of a checked call on the path :mod:`performers.ops.attention` chose.

* fused (:mod:`~performers.ops.causal.fused`): exponential kernels with a projection, from any
  initial state, with a differentiable final state;
* Triton (:mod:`performers.ops.triton.causal`, through
  :func:`performers.ops.triton.paths.triton_attention`): the same kernels on CUDA;
* generic (:mod:`~performers.ops.causal.generic`): any kernel and state, on features from
  :mod:`performers.ops.generic_features`.

The one-position step (decoding) is :mod:`~performers.ops.causal.recurrent`. Every path is
tested against :mod:`~performers.ops.causal.naive`.

A packed row (``cu_seqlens``) runs without a loop over its sequences
(:func:`packed_causal_favor_attention`, :mod:`~performers.ops.causal.packed`): on the fused
path from empty states, else on the packed generic form (any kernel, states in and out).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from performers.ops.call import FavorCall, join_pieces, packed_pieces
from performers.ops.causal.fused import fused_causal_exp_attention
from performers.ops.causal.generic import causal_linear_attention
from performers.ops.causal.packed import (
    packed_attention_features,
    packed_causal_linear_attention,
    packed_layout,
    sequence_groups,
)
from performers.ops.generic_features import attention_features, state_params
from performers.ops.numerics import accumulation_dtype
from performers.ops.state import FavorState

if TYPE_CHECKING:
    from performers.ops.triton.paths import TritonMap

__all__ = ["causal_favor_attention", "packed_causal_favor_attention"]


def causal_favor_attention(
    call: FavorCall, *, fused: bool, triton_map: TritonMap | None
) -> Tensor | tuple[Tensor, FavorState]:
    """``(B, H, L, Dv)`` in ``call.out_dtype`` (and the final :class:`FavorState` if
    ``call.return_state``): on the Triton kernels when ``triton_map`` is given (and there are
    positions), else on the fused path when ``fused``, else generic."""
    out_dtype = call.out_dtype
    if triton_map is not None and call.q.shape[2] and call.k.shape[2]:
        from performers.ops.triton.paths import triton_attention

        result = triton_attention(
            call.q, call.k, call.v, triton_map, causal=True, scale=call.input_scale,
            key_padding_mask=call.key_padding_mask, initial_state=call.initial_state,
            return_state=call.return_state, eps=call.eps,
        )  # fmt: skip
        return (result[0].to(out_dtype), result[1]) if call.return_state else result.to(out_dtype)
    q, k, v = call.compute_inputs(fused)
    dtype, initial_state = q.dtype, call.initial_state
    with torch.autocast(device_type=q.device.type, enabled=False):
        if fused:
            initial = initial_offset = None
            if initial_state is not None:
                initial = torch.cat([initial_state.kv, initial_state.normalizer.unsqueeze(-1)], dim=-1)
                acc = accumulation_dtype(dtype)
                initial, initial_offset = initial.to(acc), initial_state.log_offset.to(acc)
            out, final, final_offset = fused_causal_exp_attention(
                q,
                k,
                v,
                call.kernel.exp_form(call.projection.to(dtype)),
                scale=call.input_scale,
                key_padding_mask=call.key_padding_mask,
                chunk_size=call.chunk_size,
                segment_chunks=call.segment_chunks,
                eps=call.eps,
                initial_state=initial,
                initial_offset=initial_offset,
            )
            if call.return_state:
                return out.to(out_dtype), FavorState(final[..., :-1], final[..., -1], final_offset)
            return out.to(out_dtype)
        q_features, k_features, offsets, params = attention_features(
            call.kernel,
            q,
            k,
            call.projection,
            call.input_scale,
            causal=True,
            key_padding_mask=call.key_padding_mask,
            initial_offset=None if initial_state is None else initial_state.log_offset.to(dtype),
            params=state_params(call.kernel, initial_state, dtype),
        )
        result = causal_linear_attention(
            q_features,
            k_features,
            v,
            key_log_offsets=offsets,
            chunk_size=call.chunk_size,
            initial_state=initial_state,
            return_state=call.return_state,
            eps=call.eps,
        )
    if call.return_state:
        out, state = result
        return out.to(out_dtype), state._replace(kernel_params=params)
    return result.to(out_dtype)


def packed_causal_favor_attention(call: FavorCall, *, fused: bool) -> Tensor | tuple[Tensor, FavorState]:
    """Causal FAVOR attention of a packed call (``call.cu_seqlens``; ``(1, H, T, ·)`` inputs with
    as many key/value heads as query heads) in one pass over the row, restarting at each
    sequence (:mod:`performers.ops.causal.packed`): ``(1, H, T, Dv)`` in ``call.out_dtype``, and
    the ``N`` final states if ``call.return_state``.

    ``fused`` (an exponential kernel with a projection) runs the fused Function with
    sequence masks when no state goes in or out — the training case; calls with states, and
    every other kernel, run the packed generic form on materialized features (per-sequence
    offsets, FAVOR++ parameters and states), on groups of whole sequences of about
    :data:`PACKED_GROUP_ELEMENTS` feature elements each when the row is longer
    (:func:`~performers.ops.causal.packed.sequence_groups`). The state's ``kernel`` name is the
    caller's to set.
    """
    bounds = call.cu_seqlens
    if bounds is None:
        raise ValueError("packed_causal_favor_attention takes a packed call (cu_seqlens)")
    initial_state = call.initial_state
    fused = fused and initial_state is None and not call.return_state
    if not fused:
        groups = sequence_groups(bounds, _group_tokens(call))
        if len(groups) > 1:
            return _packed_in_groups(call, groups)
    layout = packed_layout(bounds, call.q.device)
    q, k, v = call.compute_inputs(fused)
    out_dtype = call.out_dtype
    with torch.autocast(device_type=q.device.type, enabled=False):
        if fused:
            out, _, _ = fused_causal_exp_attention(
                q, k, v, call.kernel.exp_form(call.projection.to(q.dtype)), scale=call.input_scale,
                chunk_size=call.chunk_size, segment_chunks=call.segment_chunks, eps=call.eps, packed=layout,
            )  # fmt: skip
            return out.to(out_dtype)
        dtype = q.dtype
        q_features, k_features, offsets, params = packed_attention_features(
            call.kernel, q, k, call.projection, call.input_scale, layout=layout,
            initial_offset=None if initial_state is None else initial_state.log_offset,
            params=state_params(call.kernel, initial_state, dtype),
        )  # fmt: skip
        result = packed_causal_linear_attention(
            q_features, k_features, v, layout=layout, key_log_offsets=offsets, chunk_size=call.chunk_size,
            initial_state=initial_state, return_state=call.return_state, eps=call.eps,
        )  # fmt: skip
    if call.return_state:
        out, state = result
        return out.to(out_dtype), state._replace(kernel_params=params)
    return result.to(out_dtype)


# The packed generic form materializes features of the whole row, (1, H, T, M'): past glibc's
# mmap threshold (at most 32 MiB) every such allocation is fresh pages from the OS, and at
# T = 20,217, H = 8, M' = 128 faulting them in made a packed call 1.7–2.6× slower than the same
# sequences in groups of 2,048 positions (relu and FAVOR++, forward and forward+backward, CPU,
# docs/results/packing.md). Groups of whole sequences keep each group's features near 8 MiB.
PACKED_GROUP_ELEMENTS = 1 << 21


def _group_tokens(call: FavorCall) -> int:
    """Positions per group of :func:`sequence_groups`: ``H·positions·M'`` near
    :data:`PACKED_GROUP_ELEMENTS` (``M'`` the projection's rows, else the head dimension)."""
    features = call.projection.shape[0] if call.projection is not None else call.q.shape[-1]
    return max(1, PACKED_GROUP_ELEMENTS // (call.q.shape[1] * features))


def _packed_in_groups(call: FavorCall, groups: list[tuple[int, int]]) -> Tensor | tuple[Tensor, FavorState]:
    """:func:`packed_causal_favor_attention` on each group of whole sequences (sequences
    ``[a, b)``, a sub-row of their own), outputs concatenated along the positions and states
    along the sequences: the same numbers, since no sequence reads across a group's edge."""
    pieces = packed_pieces(call, groups, unpack_single=False)
    results = [packed_causal_favor_attention(piece, fused=False) for piece in pieces]
    return join_pieces(results, return_state=call.return_state)
