"""Tile helpers shared by the FAVOR Triton kernels (``@triton.jit`` functions only).

Conventions of every kernel here: tensors are contiguous ``(B·H, L, ·)``; the map's rows ``P``
``(M', D)`` arrive already multiplied by ``√s`` and its norm weight as ``a·s/2`` (``half_norm``),
so the log-features of a row ``x`` are ``x Pᵀ − half_norm·‖x‖²``. Tiles are computed in
``ACC`` (float32, or float64 for float64 inputs); products of float16/bfloat16 inputs run in
that dtype with float32 accumulation (``LOW``); float32 products in IEEE precision, or in TF32
(``LOW`` with ``IN`` float32) when PyTorch's float32 matmuls may use it
(``torch.backends.cuda.matmul.allow_tf32``, e.g. ``torch.set_float32_matmul_precision("high")``).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def mm(a, b, LOW: tl.constexpr, IN: tl.constexpr):
    """``a @ b`` accumulated in float32/float64: in ``IN`` precision when ``LOW`` (TF32 for
    ``IN`` float32), else IEEE."""
    if LOW:
        if IN == tl.float32:
            return tl.dot(a, b, input_precision="tf32")
        return tl.dot(a.to(IN), b.to(IN))
    else:
        return tl.dot(a, b, input_precision="ieee")


@triton.jit
def load_rows(ptr, start, n, width, BR: tl.constexpr, BW: tl.constexpr, ACC: tl.constexpr):
    """Rows ``start .. start+BR`` of a contiguous ``(n, width)`` matrix, zero outside, in ``ACC``."""
    r = start + tl.arange(0, BR)
    c = tl.arange(0, BW)
    mask = (r[:, None] < n) & (c[None, :] < width)
    return tl.load(ptr + r[:, None] * width + c[None, :], mask=mask, other=0.0).to(ACC)


@triton.jit
def store_rows(ptr, value, start, n, width, BR: tl.constexpr, BW: tl.constexpr):
    r = start + tl.arange(0, BR)
    c = tl.arange(0, BW)
    mask = (r[:, None] < n) & (c[None, :] < width)
    tl.store(ptr + r[:, None] * width + c[None, :], value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def load_vector(ptr, start, n, BR: tl.constexpr, ACC: tl.constexpr, other):
    r = start + tl.arange(0, BR)
    return tl.load(ptr + r, mask=r < n, other=other).to(ACC)


@triton.jit
def store_vector(ptr, value, start, n, BR: tl.constexpr):
    r = start + tl.arange(0, BR)
    tl.store(ptr + r, value.to(ptr.dtype.element_ty), mask=r < n)


@triton.jit
def log_features(x, rows, half_norm_x, LOW: tl.constexpr, IN: tl.constexpr):
    """``x Pᵀ − half_norm·‖x‖²`` for a row tile ``x`` (BR, BD) and a tile of ``P`` (BM, BD);
    ``half_norm_x`` is the (BR,) vector ``half_norm·‖x‖²`` (zeros for row-stabilized queries)."""
    return mm(x, tl.trans(rows), LOW, IN) - half_norm_x[:, None]


@triton.jit
def running_maximum(top, tile_top):
    """One step of a maximum found while tiles stream (as flash attention finds its softmax
    maxima): the new maximum, the offset to subtract from log-features (0 while nothing was
    seen, −inf) and the factor ``exp(old − new) ≤ 1`` that brings the partial sums kept in the
    old offset's units to the new one (0 from −inf: those sums were empty; 1 while nothing was
    seen)."""
    grown = tl.maximum(top, tile_top)
    offset = tl.where(grown == float("-inf"), 0.0, grown)
    rescale = tl.where(grown == float("-inf"), 1.0, tl.exp(top - offset))
    return grown, offset, rescale


# Feature maps (the ``ACT`` constexpr of every kernel): the exponential form, whose
# pre-activation is a log-feature stabilized by an offset, or a generalized kernel
# ``f(x Pᵀ) + eps`` (no offsets).
EXP = tl.constexpr(0)
RELU = tl.constexpr(1)
ELU_PLUS_ONE = tl.constexpr(2)
ABS = tl.constexpr(3)
PLAIN_EXP = tl.constexpr(4)


@triton.jit
def feature_tile(u, offset, keep, ACT: tl.constexpr, FEPS: tl.constexpr):
    """``(φ, ∂φ/∂u)`` of pre-activations ``u`` (BR, BM) where ``keep``, else ``(0, 0)``.

    ``EXP``: ``u`` is a log-feature, ``φ = exp(u − offset)`` per row (so ``∂φ/∂u = φ``);
    otherwise ``φ = f(u) + FEPS`` and ``offset`` is ignored.
    """
    if ACT == EXP:
        phi = tl.where(keep, tl.exp(tl.where(keep, u - offset[:, None], 0.0)), 0.0)
        return phi, phi
    else:
        if ACT == RELU:
            value = tl.maximum(u, 0.0)
            slope = tl.where(u > 0.0, 1.0, 0.0)
        elif ACT == ELU_PLUS_ONE:
            e = tl.exp(tl.minimum(u, 0.0))
            value = tl.where(u > 0.0, u + 1.0, e)
            slope = tl.where(u > 0.0, 1.0, e)
        elif ACT == ABS:
            value = tl.abs(u)
            slope = tl.where(u > 0.0, 1.0, tl.where(u < 0.0, -1.0, 0.0))
        else:
            value = tl.exp(u)
            slope = value
        return tl.where(keep, value + FEPS, 0.0), tl.where(keep, slope, 0.0)
