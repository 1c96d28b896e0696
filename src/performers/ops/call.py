"""One checked call of FAVOR attention, as it travels from the entry point to the path that runs it.

:func:`check_favor_call` checks the arguments of :func:`performers.ops.favor_attention` once
(typed errors naming the argument) and returns a :class:`FavorCall`: the inputs with the kernel
and the softmax temperature resolved. The direction packages
(:mod:`performers.ops.bidirectional`, :mod:`performers.ops.causal`) and
:func:`performers.distributed.favor_attention` take that one object instead of a list of
keywords.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from performers.ops.checks import (
    check_positive_int,
    check_state,
    shape_str,
    validate_cu_seqlens,
    validate_devices,
    validate_mask,
    validate_projection,
    validate_qkv,
)
from performers.ops.kernels import Kernel, KernelLike, get_kernel
from performers.ops.masks import check_dropout, mask_key_padding, resolve_is_causal
from performers.ops.state import DEFAULT_CHUNK_SIZE, SEGMENT_CHUNKS, FavorState

__all__ = [
    "FavorCall",
    "check_favor_call",
    "check_initial_state",
    "check_state_options",
    "compute_dtype",
    "input_scale",
    "join_pieces",
    "packed_pieces",
    "resolve_masks",
    "state_dtype",
]


@dataclass(frozen=True, eq=False)
class FavorCall:
    """The checked arguments of one :func:`~performers.ops.favor_attention` call.

    Attributes:
        q, k, v: ``(B, H, Lq, D)``, ``(B, Hkv, Lk, D)``, ``(B, Hkv, Lk, Dv)``, one dtype;
            ``Hkv = H`` unless ``enable_gqa`` was given (then ``Hkv`` divides ``H``).
        projection: ``(M, D)`` or None (generalized kernels only).
        kernel: the resolved :class:`~performers.ops.Kernel`.
        scale: the softmax temperature (resolved: ``1/√D`` when not given).
        causal: ``is_causal`` as resolved (its older spelling ``causal``, or implied by a
            causal ``attn_mask``); key_padding_mask: with ``attn_mask``'s key padding folded in.
        chunk_size, block_size, initial_state, return_state, eps,
        backend, recompute_features: as passed to :func:`~performers.ops.favor_attention`.
        segment_chunks: chunks per segment of the fused causal path (tests and benchmarks set it).
        cu_seqlens: a packed batch's sequence boundaries ``(0, …, T)`` as ints (checked from the
            ``cu_seqlens`` tensor, :func:`performers.ops.checks.validate_cu_seqlens`), or None;
            ``initial_state`` then has one row per sequence.
    """

    q: Tensor
    k: Tensor
    v: Tensor
    projection: Tensor | None
    kernel: Kernel
    scale: float
    causal: bool = False
    key_padding_mask: Tensor | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    block_size: int | None = None
    initial_state: FavorState | None = None
    return_state: bool = False
    eps: float | None = None
    backend: str = "auto"
    recompute_features: bool = False
    segment_chunks: int = SEGMENT_CHUNKS
    cu_seqlens: tuple[int, ...] | None = None

    @property
    def input_scale(self) -> float:
        """``√scale``: the factor ``q`` and ``k`` are multiplied by before the feature map."""
        return self.scale**0.5

    @property
    def out_dtype(self) -> torch.dtype:
        """The dtype of the output: that of the inputs (one dtype, checked)."""
        return torch.promote_types(self.q.dtype, self.v.dtype)

    def replace(self, **changes) -> FavorCall:
        """This call with some fields changed (inputs already checked)."""
        return dataclasses.replace(self, **changes)

    def compute_inputs(self, fused: bool) -> tuple[Tensor, Tensor, Tensor]:
        """``q``, ``k``, ``v`` in the dtype the PyTorch paths compute in: float32 for float16 and
        bfloat16 inputs, except bfloat16 inputs on the fused paths, whose products run in
        bfloat16 (their sums, maxima, normalizers and causal state stay in float32)."""
        q, k, v = self.q, self.k, self.v
        dtype = compute_dtype(q, k, v)
        if fused and q.dtype == k.dtype == v.dtype == torch.bfloat16:
            dtype = torch.bfloat16
        return q.to(dtype), k.to(dtype), v.to(dtype)


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The promoted dtype of ``tensors``, float32 in place of float16 and bfloat16."""
    dtype = torch.promote_types(tensors[0].dtype, tensors[1].dtype)
    for t in tensors[2:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def input_scale(scale: float | None, dim: int) -> float:
    """The softmax temperature: ``1/√dim`` when None, else a checked positive finite number."""
    if scale is None:
        return dim**-0.5
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 0 < scale < math.inf:
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    return float(scale)


def check_state_options(causal: bool, initial_state: FavorState | None, return_state: bool) -> None:
    """``initial_state`` and ``return_state`` only with ``is_causal`` (ValueError otherwise)."""
    if (initial_state is not None or return_state) and not causal:
        raise ValueError("initial_state and return_state are only defined for is_causal=True")


def state_dtype(input_dtype: torch.dtype) -> torch.dtype:
    """The dtype FAVOR attention keeps its causal state in: float64 for float64 inputs, float32
    otherwise (half-precision inputs accumulate in float32)."""
    return torch.float64 if input_dtype == torch.float64 else torch.float32


def check_initial_state(
    state: FavorState,
    q: Tensor,
    v: Tensor,
    projection: Tensor | None,
    kernel: Kernel,
    *,
    name: str,
    sequences: int | None = None,
) -> None:
    """``state`` continues a call with these queries, values, projection and kernel (see
    :func:`performers.ops.checks.check_state`): ``(B, H, M', Dv)`` with ``H`` the heads of ``q``
    and ``M'`` the kernel's feature width for ``projection``; ``B`` is ``sequences`` for a
    packed call (one state per sequence), else the batch of ``q``."""
    features = kernel.feature_dim(projection, q.shape[-1])
    described = "" if projection is None else f" with projection {shape_str(projection)}"
    if sequences is not None:
        described += f" packed as {sequences} sequences (cu_seqlens)"
    check_state(
        state,
        name=name,
        shape=(q.shape[0] if sequences is None else sequences, q.shape[1], features, v.shape[-1]),
        inputs=f"q {shape_str(q)}, v {shape_str(v)}{described} and kernel {kernel.name!r}",
        kernel=kernel,
        dtype=state_dtype(q.dtype),
        input_dtype=q.dtype,
        device=q.device,
    )


def resolve_masks(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    attn_mask: Tensor | None,
    key_padding_mask: Tensor | None,
    causal: bool,
    enable_gqa: bool,
    cu_seqlens: Tensor | None,
) -> tuple[Tensor | None, bool, tuple[int, ...] | None]:
    """SDPA's ``attn_mask`` folded into ``key_padding_mask`` and ``causal`` (a mask with the causal
    triangle implies ``causal``, then checked as such), and ``cu_seqlens`` checked into its
    boundaries; returns ``(key_padding_mask, causal, boundaries or None)``. Shared by
    :func:`check_favor_call` and :func:`performers.ops.linear_attention` (``q``, ``k``: queries
    and keys or their features)."""
    if attn_mask is not None:
        padding, implied = mask_key_padding(
            attn_mask, batch=q.shape[0], heads=q.shape[1], q_len=q.shape[2], k_len=k.shape[2]
        )
        key_padding_mask = padding if key_padding_mask is None else key_padding_mask | padding
        causal = causal or implied
        if causal:
            validate_qkv(q, k, v, causal=True, enable_gqa=enable_gqa)
    bounds = None
    if cu_seqlens is not None:
        masked = key_padding_mask is not None or attn_mask is not None
        bounds = validate_cu_seqlens(cu_seqlens, q, k, masked=masked)
    return key_padding_mask, causal, bounds


def check_favor_call(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    projection: Tensor | None,
    *,
    kernel: KernelLike = "softmax",
    is_causal: bool = False,
    causal: bool | None = None,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    enable_gqa: bool = False,
    scale: float | None = None,
    key_padding_mask: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    block_size: int | None = None,
    initial_state: FavorState | None = None,
    return_state: bool = False,
    eps: float | None = None,
    backend: str = "auto",
    recompute_features: bool = False,
    segment_chunks: int = SEGMENT_CHUNKS,
    cu_seqlens: Tensor | None = None,
) -> FavorCall:
    """The input checks of :func:`~performers.ops.favor_attention` (typed errors naming the
    argument); returns the checked :class:`FavorCall`, with ``attn_mask`` folded into
    ``key_padding_mask`` and ``causal``. Also used by :func:`performers.distributed.favor_attention`.
    (``backend`` is checked where it is resolved, :func:`performers.ops.attention.triton_map_for`.)
    ``cu_seqlens`` is checked into its boundaries (:func:`performers.ops.checks.validate_cu_seqlens`)
    before ``initial_state``, which a packed call takes with one row per sequence."""
    causal = resolve_is_causal(is_causal, causal)
    check_dropout(dropout_p)
    validate_qkv(q, k, v, causal=causal and attn_mask is None, enable_gqa=enable_gqa)
    kern = get_kernel(kernel)
    validate_projection(projection, kern, q.shape[-1])
    validate_mask(key_padding_mask, k.shape[0], k.shape[2])
    validate_devices(
        q=q,
        k=k,
        v=v,
        projection=projection,
        key_padding_mask=key_padding_mask,
        attn_mask=attn_mask if isinstance(attn_mask, Tensor) else None,  # a non-tensor: TypeError below
    )
    key_padding_mask, causal, bounds = resolve_masks(
        q, k, v, attn_mask=attn_mask, key_padding_mask=key_padding_mask, causal=causal,
        enable_gqa=enable_gqa, cu_seqlens=cu_seqlens,
    )  # fmt: skip
    check_positive_int("chunk_size", chunk_size)
    check_positive_int("block_size", block_size, optional=True)
    check_state_options(causal, initial_state, return_state)
    if initial_state is not None:
        sequences = None if bounds is None else len(bounds) - 1
        check_initial_state(initial_state, q, v, projection, kern, name="initial_state", sequences=sequences)
    check_positive_int("segment_chunks", segment_chunks)
    return FavorCall(
        q, k, v, projection, kern, input_scale(scale, q.shape[-1]),
        causal=causal, key_padding_mask=key_padding_mask, chunk_size=chunk_size, block_size=block_size,
        initial_state=initial_state, return_state=return_state, eps=eps, backend=backend,
        recompute_features=recompute_features, segment_chunks=segment_chunks, cu_seqlens=bounds,
    )  # fmt: skip


def packed_pieces(call: FavorCall, groups: list[tuple[int, int]], *, unpack_single: bool) -> list[FavorCall]:
    """The sub-calls of a packed call for consecutive groups of its whole sequences
    ``[(a, b), …]`` (sequences ``a`` to ``b - 1``, in order, covering the row): ``q``, ``k``,
    ``v`` split along the positions, ``initial_state`` rows ``a:b``, ``cu_seqlens`` rebased to
    the piece — None for a piece of one sequence when ``unpack_single`` (an unpacked call).

    One ``split`` of each input, not a slice per piece: the backward of a slice writes its
    gradient into a zero tensor of the whole row (``N`` row-sized fills and adds, most of a
    packed backward at N = 64); split's backward is one concatenation.
    """
    bounds = call.cu_seqlens or ()
    sizes = [bounds[b] - bounds[a] for a, b in groups]
    pieces = zip(*(t.split(sizes, dim=2) for t in (call.q, call.k, call.v)), strict=True)
    calls = []
    for (a, b), (q, k, v) in zip(groups, pieces, strict=True):
        rebased = None if unpack_single and b - a == 1 else tuple(x - bounds[a] for x in bounds[a : b + 1])
        state = None if call.initial_state is None else call.initial_state.rows(a, b)
        calls.append(call.replace(q=q, k=k, v=v, initial_state=state, cu_seqlens=rebased))
    return calls


def join_pieces(
    results: list[Tensor] | list[tuple[Tensor, FavorState]], *, return_state: bool
) -> Tensor | tuple[Tensor, FavorState]:
    """The results of :func:`packed_pieces`' calls as one: outputs concatenated along the
    positions, states along the sequences."""
    if not return_state:
        return torch.cat(results, dim=2)
    return torch.cat([r[0] for r in results], dim=2), FavorState.cat([r[1] for r in results])
