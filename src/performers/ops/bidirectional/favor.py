"""Bidirectional FAVOR attention of a checked call on the path :mod:`performers.ops.attention` chose.

* fused (:mod:`~performers.ops.bidirectional.fused`): exponential kernels with a projection;
* Triton (:mod:`performers.ops.triton.bidirectional`, through
  :func:`performers.ops.triton.paths.triton_attention`): the same kernels on CUDA;
* generic (:mod:`~performers.ops.bidirectional.generic`): any kernel, on features from
  :mod:`performers.ops.generic_features`.

A packed call (``cu_seqlens``) on the fused path runs :func:`packed_bidirectional_favor_attention`
(:mod:`~performers.ops.bidirectional.packed`: the whole row in two Functions); the others run one
call per sequence (:func:`performers.ops.attention._run_packed_loop`).

Every one is tested against :mod:`~performers.ops.bidirectional.naive`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from performers.ops.bidirectional.fused import fused_bidirectional_exp_attention
from performers.ops.bidirectional.generic import bidirectional_linear_attention
from performers.ops.bidirectional.packed import packed_fused_bidirectional_exp_attention
from performers.ops.call import FavorCall
from performers.ops.generic_features import attention_features, state_params

if TYPE_CHECKING:
    from performers.ops.triton.paths import TritonMap

__all__ = ["bidirectional_favor_attention", "packed_bidirectional_favor_attention"]


def bidirectional_favor_attention(call: FavorCall, *, fused: bool, triton_map: TritonMap | None) -> Tensor:
    """``(B, H, Lq, Dv)`` in ``call.out_dtype``: on the Triton kernels when ``triton_map`` is
    given (and there are positions), else on the fused path when ``fused``, else generic."""
    if triton_map is not None and call.q.shape[2] and call.k.shape[2]:
        from performers.ops.triton.paths import triton_attention

        out = triton_attention(
            call.q, call.k, call.v, triton_map, causal=False, scale=call.input_scale,
            key_padding_mask=call.key_padding_mask, initial_state=None, return_state=False, eps=call.eps,
        )  # fmt: skip
        return out.to(call.out_dtype)
    q, k, v = call.compute_inputs(fused)
    with torch.autocast(device_type=q.device.type, enabled=False):
        if fused:
            out = fused_bidirectional_exp_attention(
                q,
                k,
                v,
                call.kernel.exp_form(call.projection.to(q.dtype)),
                scale=call.input_scale,
                key_padding_mask=call.key_padding_mask,
                block_size=call.block_size,
                eps=call.eps,
                recompute_features=call.recompute_features,
            )
            return out.to(call.out_dtype)
        q_features, k_features, _, _ = attention_features(
            call.kernel,
            q,
            k,
            call.projection,
            call.input_scale,
            causal=False,
            key_padding_mask=call.key_padding_mask,
            initial_offset=None,
            params=state_params(call.kernel, None, q.dtype),
        )
        return bidirectional_linear_attention(q_features, k_features, v, call.eps).to(call.out_dtype)


def packed_bidirectional_favor_attention(call: FavorCall) -> Tensor:
    """``(1, H, T, Dv)`` in ``call.out_dtype`` for a packed call (``call.cu_seqlens``) of a
    kernel with an exponential form and a projection, on the fused path: every sequence
    attends within itself (:mod:`performers.ops.bidirectional.packed`)."""
    q, k, v = call.compute_inputs(True)
    with torch.autocast(device_type=q.device.type, enabled=False):
        out = packed_fused_bidirectional_exp_attention(
            q,
            k,
            v,
            call.kernel.exp_form(call.projection.to(q.dtype)),
            bounds=call.cu_seqlens,
            scale=call.input_scale,
            block_size=call.block_size,
            eps=call.eps,
            recompute_features=call.recompute_features,
        )
    return out.to(call.out_dtype)
