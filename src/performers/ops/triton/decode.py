r"""One causal FAVOR step as one Triton kernel (generation; no autograd).

``(state, q_t, k_t, v_t) → (out_t, state')`` per batch·head in one program: the new key's
log-features and the query's row maximum (one pass over feature tiles), the running offset
``m' = max(m, max_f log φ_f(k_t))``, the state rescaled by ``exp(m − m')`` plus
``φ(k_t)[v_t 1]ᵀ`` in units of ``m'``, and the readout ``φ(q_t)S' / φ(q_t)z'`` (a second pass),
as :func:`performers.ops.causal.recurrent.causal_linear_attention_step` computes it. Generalized
kernels (``f(x Pᵀ) + eps``) keep offset 0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from performers.ops.numerics import accumulation_dtype
from performers.ops.triton.launch import activation_code, compute_types, kernel_eps, pow2
from performers.ops.triton.tiles import EXP, feature_tile, load_rows, load_vector, store_rows, store_vector

__all__ = ["triton_attention_step"]


@triton.jit
def step_kernel(
    q_ptr, k_ptr, v_ptr, p_ptr, s_ptr, z_ptr, off_ptr, out_ptr, new_s_ptr, new_z_ptr, new_off_ptr,
    M, D, DV, half_norm, eps,
    ACT: tl.constexpr, FEPS: tl.constexpr,
    BM: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
    ACC: tl.constexpr, LOW: tl.constexpr, IN: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0).to(tl.int64)  # 64-bit offsets: (B·H)·L·D may exceed 2³¹
    d = tl.arange(0, BD)
    q = tl.load(q_ptr + bh * D + d, mask=d < D, other=0.0).to(ACC)
    k = tl.load(k_ptr + bh * D + d, mask=d < D, other=0.0).to(ACC)
    dv = tl.arange(0, BV)
    v = tl.load(v_ptr + bh * DV + dv, mask=dv < DV, other=0.0).to(ACC)
    norm_k = half_norm * tl.sum(k * k, 0)
    old = tl.load(off_ptr + bh).to(ACC)
    # Generalized kernels: offset 0 (a state in other units is brought there by exp(old)).
    new = tl.sum(tl.zeros((1,), ACC), 0)
    query_top = tl.max(tl.zeros((BM,), ACC), 0)
    if ACT == EXP:
        key_top = tl.max(tl.full((BM,), float("-inf"), ACC), 0)
        query_top = key_top
        for m0 in range(0, M, BM):
            cols = m0 + tl.arange(0, BM)
            p = load_rows(p_ptr, m0, M, D, BM, BD, ACC)
            log_k = tl.where(cols < M, tl.sum(p * k[None, :], 1) - norm_k, float("-inf"))
            key_top = tl.maximum(key_top, tl.max(log_k, 0))
            query_top = tl.maximum(
                query_top, tl.max(tl.where(cols < M, tl.sum(p * q[None, :], 1), float("-inf")), 0)
            )
        new = tl.maximum(old, key_top)
    # An empty state has offset -inf: its rescaling factor is 0, and its sums are zero.
    decay = tl.exp(old - new)
    num = tl.zeros((BV,), ACC)
    den = tl.sum(tl.zeros((BM,), ACC), 0)
    for m0 in range(0, M, BM):
        cols = m0 + tl.arange(0, BM)
        valid = (cols < M)[None, :]
        p = load_rows(p_ptr, m0, M, D, BM, BD, ACC)
        # (1, BM) tiles through the kernels' feature map, then back to vectors.
        fk, _ = feature_tile(
            (tl.sum(p * k[None, :], 1) - norm_k)[None, :], tl.zeros((1,), ACC) + new, valid, ACT, FEPS
        )
        fq, _ = feature_tile(
            tl.sum(p * q[None, :], 1)[None, :], tl.zeros((1,), ACC) + query_top, valid, ACT, FEPS
        )
        fk = tl.sum(fk, 0)
        fq = tl.sum(fq, 0)
        s = load_rows(s_ptr + bh * M * DV, m0, M, DV, BM, BV, ACC) * decay + fk[:, None] * v[None, :]
        z = load_vector(z_ptr + bh * M, m0, M, BM, ACC, 0.0) * decay + fk
        store_rows(new_s_ptr + bh * M * DV, s, m0, M, DV, BM, BV)
        store_vector(new_z_ptr + bh * M, z, m0, M, BM)
        num += tl.sum(fq[:, None] * s, 0)
        den += tl.sum(fq * z, 0)
    inverse = tl.where(tl.abs(den) < eps, 0.0, 1.0 / tl.where(tl.abs(den) < eps, 1.0, den))
    tl.store(out_ptr + bh * DV + dv, (num * inverse).to(out_ptr.dtype.element_ty), mask=dv < DV)
    tl.store(new_off_ptr + bh, new.to(new_off_ptr.dtype.element_ty))


def triton_attention_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rows: Tensor,
    kv: Tensor | None,
    normalizer: Tensor | None,
    offset: Tensor | None,
    *,
    scale: float,
    activation: str = "exp",
    norm: float = 0.0,
    feature_eps: float = 1e-3,
    eps: float | None = None,
    feature_block: int = 64,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One causal step (Triton, no autograd) with features ``exp(P(√s·x) − a·s‖x‖²/2 − c)``
    (``activation="exp"``) or ``f(P(√s·x)) + feature_eps`` (a generalized kernel).

    Args:
        q, k: ``(B, H, 1, D)``; v: ``(B, H, 1, Dv)``.
        rows: ``P`` ``(M', D)``; scale: ``√s``; activation, norm (``a``), feature_eps: the map.
        kv ``(B, H, M', Dv)``, normalizer ``(B, H, M')``, offset ``(B, H)``: the state before
            this position in the units of ``P x̃ − a‖x̃‖²/2``, or all None at the start.
        eps: denominator guard (default: the accumulation dtype's smallest normal number).

    Returns:
        ``(out (B, H, 1, Dv), kv, normalizer, offset)``: the output and the new state.
    """
    act = activation_code(activation)
    batch, heads, _, d = q.shape
    dv, m = v.shape[-1], rows.shape[0]
    bh = batch * heads
    acc_dtype = accumulation_dtype(q.dtype)
    acc = dict(device=q.device, dtype=acc_dtype)
    eps = kernel_eps(eps, acc_dtype)
    if kv is None:
        kv, normalizer = torch.zeros(bh, m, dv, **acc), torch.zeros(bh, m, **acc)
        offset = torch.full((bh,), float("-inf"), **acc)
    kv = kv.reshape(bh, m, dv).to(acc_dtype).contiguous()
    normalizer = normalizer.reshape(bh, m).to(acc_dtype).contiguous()
    offset = offset.reshape(bh).to(acc_dtype).contiguous()
    out = torch.empty(bh, dv, **acc)
    new_kv, new_normalizer, new_offset = (
        torch.empty_like(kv),
        torch.empty_like(normalizer),
        torch.empty_like(offset),
    )
    scaled_rows = (rows.detach() * scale).to(acc_dtype).contiguous()
    step_kernel[(bh,)](
        q.reshape(bh, d).contiguous(), k.reshape(bh, d).contiguous(), v.reshape(bh, dv).contiguous(),
        scaled_rows, kv, normalizer, offset, out, new_kv, new_normalizer, new_offset,
        m, d, dv, 0.5 * norm * scale * scale if act == EXP.value else 0.0, eps,
        ACT=act, FEPS=float(feature_eps), BM=pow2(feature_block), BD=pow2(d), BV=pow2(dv),
        **compute_types(q.dtype),
    )  # fmt: skip
    return (
        out.reshape(batch, heads, 1, dv),
        new_kv.reshape(batch, heads, m, dv),
        new_normalizer.reshape(batch, heads, m),
        new_offset.reshape(batch, heads),
    )
