"""What :func:`performers.favor_attention` runs when it chooses the Triton kernels: which
feature maps have a Triton form, and the calls in :class:`~performers.ops.state.FavorState`
units. The kernel modules (and ``triton``) are imported only when a kernel runs."""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
from torch import Tensor

from performers.ops.features import GENERALIZED_EPS
from performers.ops.kernels import KERNELS, Kernel
from performers.ops.state import FavorState
from performers.ops.triton import FLOAT64_TRITON, triton_version

__all__ = [
    "SHARED_KIB",
    "TritonMap",
    "float64_reason",
    "packed_reason",
    "shared_memory_reason",
    "triton_attention",
    "triton_map",
    "triton_step",
]

# The registry's generalized kernels f(x Pᵀ) + eps with a Triton form, by name → activation.
GENERALIZED = {"relu": "relu", "elu": "elu", "abs": "abs", "exp": "plain-exp"}


class TritonMap(NamedTuple):
    """A feature map as the kernels take it: rows ``P`` (``(M', D)``; the identity when a
    generalized kernel has no projection), the activation, the exponential form's norm weight
    ``a`` and constant ``c`` (the units of a :class:`FavorState`'s offset), and ``eps``."""

    rows: Tensor
    activation: str
    norm: float = 0.0
    log_const: float = 0.0
    feature_eps: float = GENERALIZED_EPS


# Shared memory per program in KiB (the largest over the kernels, sm_90, measured with
# compile_check, rounded up) with the default tiles (launch.Blocks.for_dims), by (bytes per
# element, head dimension rounded up to a power of two, at least 64); larger D: not measured.
SHARED_KIB = {
    (2, 64): 148, (2, 128): 138, (2, 256): 219,
    (4, 64): 113, (4, 128): 147, (4, 256): 291,
    (8, 64): 113, (8, 128): 217, (8, 256): 425,
}  # fmt: skip


SHARED_MARGIN = 1.1


def shared_memory_reason(dim: int, value_dim: int, dtype: torch.dtype, available_kib: float) -> str | None:
    """Why the kernels cannot run with head dimensions ``dim``/``value_dim`` and inputs of
    ``dtype`` on a GPU that gives a program ``available_kib`` of shared memory (None: they can)."""
    size = dtype.itemsize
    width = max(64, 1 << (max(dim, value_dim) - 1).bit_length())
    need = SHARED_KIB.get((size, width))
    if need is None:
        return f"head dimension {max(dim, value_dim)} is above the 256 the kernels' tiles were sized for"
    # A margin: the compiler's choices differ between triton versions (3.6 needs up to 4 % more
    # than the 3.9 these were measured with).
    if need * SHARED_MARGIN > available_kib:
        return (
            f"{dtype} with head dimension {max(dim, value_dim)} needs about {need} KiB of shared "
            f"memory per program; this GPU offers {available_kib:.0f} KiB"
        )
    return None


def float64_reason(installed: tuple[int, int] | None) -> str | None:
    """Why the compiled kernels cannot take float64 inputs with triton ``installed`` (None: they
    can, or triton is missing, which is said elsewhere)."""
    if installed is None or installed >= FLOAT64_TRITON:
        return None
    return (
        f"float64 products need triton >= {'.'.join(map(str, FLOAT64_TRITON))} "
        f"(installed: {'.'.join(map(str, installed))})"
    )


# CUDA grids hold at most 65,535 programs along their second and third axes (batch·heads).
MAX_BATCH_HEADS = 65535


def packed_reason(bounds: tuple[int, ...], q: Tensor, v: Tensor, *, causal: bool) -> str | None:
    """Why a packed call (``cu_seqlens`` boundaries ``bounds``) cannot run as one launch per
    pass (None: it can; else it runs one call per sequence): the grids hold the sequences
    (causal state passes) or their segments (bidirectional reductions) along an axis of at most
    :data:`MAX_BATCH_HEADS` programs."""
    from performers.ops.triton.launch import Blocks

    dtype = torch.promote_types(q.dtype, v.dtype)
    blocks = Blocks.for_dims(q.shape[-1], v.shape[-1], dtype)
    longest = max(end - start for start, end in itertools.pairwise(bounds))
    segments = (len(bounds) - 1) * (1 if causal else blocks.splits(longest))
    if segments > MAX_BATCH_HEADS:
        return f"{segments:,} sequence segments exceed the {MAX_BATCH_HEADS:,} programs of a CUDA grid axis"
    return None


def triton_map(
    kernel: Kernel, projection: Tensor | None, q: Tensor, v: Tensor, *, step: bool = False
) -> TritonMap | str:
    """The :class:`TritonMap` of ``kernel`` with ``projection``, or why the kernels cannot serve
    these inputs (``step``: the one-position decode kernel, whose grid and tiles are smaller)."""
    dtype = torch.promote_types(q.dtype, v.dtype)
    if not step:  # (the step kernel has no matrix products and a one-axis grid)
        reason = dtype == torch.float64 and q.device.type == "cuda" and float64_reason(triton_version())
        if reason:
            return reason
        batch_heads = q.shape[0] * q.shape[1]
        if batch_heads > MAX_BATCH_HEADS:
            return f"B·H = {batch_heads:,} exceeds the {MAX_BATCH_HEADS:,} programs of a CUDA grid axis"
        if q.device.type == "cuda":
            optin = getattr(torch.cuda.get_device_properties(q.device), "shared_memory_per_block_optin", 0)
            reason = optin and shared_memory_reason(q.shape[-1], v.shape[-1], dtype, optin / 1024)
            if reason:
                return reason
    if kernel.exp_form is not None:
        if projection is None:
            return "the exponential kernels need a projection"
        form = kernel.exp_form(projection)
        return TritonMap(form.rows, "exp", form.norm, form.log_const)
    if kernel.name in GENERALIZED and KERNELS.get(kernel.name) is kernel:
        if projection is None:
            projection = torch.eye(q.shape[-1], device=q.device, dtype=torch.float32)
        return TritonMap(projection, GENERALIZED[kernel.name])
    return (
        f"kernel {kernel.name!r} has no Triton form (the exponential-form kernels and the "
        f"generalized {', '.join(sorted(GENERALIZED))} have one)"
    )


def _one_dtype(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    # float16/bfloat16 stay so: products in that dtype, accumulation in float32.
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def triton_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    feature_map: TritonMap,
    *,
    causal: bool,
    scale: float,
    key_padding_mask: Tensor | None,
    initial_state: FavorState | None,
    return_state: bool,
    eps: float | None,
    cu_seqlens: tuple[int, ...] | None = None,
) -> Tensor | tuple[Tensor, FavorState]:
    """Bidirectional or causal attention on the Triton kernels; the output in float32 (float64
    for float64 inputs), states in :class:`FavorState` units. ``cu_seqlens``: a packed call's
    boundaries (every pass one launch for all its sequences; states ``(N, H, ·)``)."""
    from performers.ops.triton.bidirectional import triton_bidirectional_attention
    from performers.ops.triton.causal import triton_causal_attention

    q, k, v = _one_dtype(q, k, v)
    fm = feature_map
    options = dict(
        scale=scale, activation=fm.activation, norm=fm.norm, feature_eps=fm.feature_eps,
        key_padding_mask=key_padding_mask, eps=eps,
    )  # fmt: skip
    with torch.autocast(device_type=q.device.type, enabled=False):
        if not causal:
            return triton_bidirectional_attention(q, k, v, fm.rows, cu_seqlens=cu_seqlens, **options)
        if initial_state is not None:
            # FavorState offsets include the map's constant c; the kernels' units do not.
            options.update(
                initial_kv=initial_state.kv,
                initial_normalizer=initial_state.normalizer,
                initial_offset=initial_state.log_offset + fm.log_const,
            )
        out, kv, normalizer, offset = triton_causal_attention(
            q, k, v, fm.rows, cu_seqlens=cu_seqlens, **options
        )
    return (out, FavorState(kv, normalizer, offset - fm.log_const)) if return_state else out


def triton_step(
    q: Tensor, k: Tensor, v: Tensor, state: FavorState | None, feature_map: TritonMap, *, scale: float, eps
) -> tuple[Tensor, FavorState]:
    """One causal position on the fused Triton step (no autograd)."""
    from performers.ops.triton.decode import triton_attention_step

    fm = feature_map
    previous = (None,) * 3 if state is None else (state.kv, state.normalizer, state.log_offset + fm.log_const)
    with torch.autocast(device_type=q.device.type, enabled=False):
        out, kv, normalizer, offset = triton_attention_step(
            *_one_dtype(q, k, v), fm.rows, *previous, scale=scale, activation=fm.activation,
            norm=fm.norm, feature_eps=fm.feature_eps, eps=eps,
        )  # fmt: skip
    return out, FavorState(kv, normalizer, offset - fm.log_const)
