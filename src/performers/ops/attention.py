"""FAVOR attention entry points: input checks and the choice of path, nothing else.

``favor_attention`` takes the keywords of ``F.scaled_dot_product_attention`` with their
meaning there: inputs ``(B, H, L, D)`` in one dtype (mixed dtypes are a TypeError, as in SDPA),
``attn_mask`` (boolean, True = attend; the masks that factor into key padding, with or without
the causal triangle: :mod:`performers.ops.masks`), ``dropout_p`` (0 only), ``is_causal``,
``scale`` (default ``1/√D``) and ``enable_gqa``; ``causal`` is kept as the older spelling of
``is_causal``. Inputs in float16/bfloat16 are computed in float32 (with autocast disabled
inside) and the output is returned in the input dtype — except bfloat16 inputs on the fused
paths (bidirectional and causal), whose products run in bfloat16 (sums, maxima, normalizers and
the causal state in float32; the returned state is float32). The projection may have any
floating dtype: it is used in the dtype of the computation and never decides the output's.
A causal state passed back in (``initial_state``, the ``state`` of a step) is checked against
the inputs it continues, including the kernel it records
(:func:`performers.ops.call.check_initial_state`).

The arguments are checked once into a :class:`~performers.ops.call.FavorCall`, which goes to
the direction that runs it — :func:`performers.ops.bidirectional.favor.bidirectional_favor_attention`
or :func:`performers.ops.causal.favor.causal_favor_attention` — with the path chosen here:

* ``"fused"``: kernels with an exponential form (:attr:`Kernel.exp_form <performers.ops.Kernel>`)
  and a projection run hand-written autograd Functions (:mod:`performers.ops.bidirectional.fused`,
  :mod:`performers.ops.causal.fused`; causal from any initial state, with a differentiable
  final state).
* Triton (``backend=``): the same exponential kernels as Triton kernels
  (:mod:`performers.ops.triton`), for CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``.
* ``"generic"``: any kernel, any state; materialized stabilized features
  (:mod:`~performers.ops.generic_features`) into :mod:`performers.ops.bidirectional.generic` or
  :mod:`performers.ops.causal.generic`.

The decoding step (:func:`favor_attention_step`) runs :mod:`performers.ops.causal.recurrent` or
the Triton step (:mod:`performers.ops.triton.decode`). Every path is tested against the naive
references of its direction (:mod:`performers.ops.bidirectional.naive`,
:mod:`performers.ops.causal.naive`; both built on :mod:`performers.ops.naive`).

:func:`favor_attention` picks the fused path whenever it can serve the inputs (the Triton
kernels for CUDA tensors with ``backend="auto"``); tests pick a path by name through the
private :func:`_favor_attention`.

Under ``torch.compile`` the paths that loop over blocks of positions in Python (fused, causal,
Triton) run eagerly, called from the compiled graph, so that one graph serves every length;
only the loop-free generic bidirectional path is traced (docs/guides/attention.md).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from performers.ops.bidirectional.favor import (
    bidirectional_favor_attention,
    packed_bidirectional_favor_attention,
)
from performers.ops.bidirectional.generic import bidirectional_linear_attention
from performers.ops.call import (
    FavorCall,
    check_favor_call,
    check_initial_state,
    check_state_options,
    compute_dtype,
    input_scale,
    join_pieces,
    packed_pieces,
    resolve_masks,
)
from performers.ops.causal.favor import causal_favor_attention, packed_causal_favor_attention
from performers.ops.causal.generic import causal_linear_attention
from performers.ops.causal.packed import packed_causal_linear_attention, packed_layout, serves_kernel
from performers.ops.causal.recurrent import exp_attention_step, generic_attention_step
from performers.ops.checks import (
    check_positive_int,
    check_state,
    shape_str,
    validate_devices,
    validate_mask,
    validate_projection,
    validate_qkv,
)
from performers.ops.kernels import Kernel, KernelLike, get_kernel
from performers.ops.masks import resolve_is_causal
from performers.ops.state import DEFAULT_CHUNK_SIZE, SEGMENT_CHUNKS, FavorState
from performers.ops.underflow import warn_zero_rows

if TYPE_CHECKING:
    from performers.ops.triton.paths import TritonMap

__all__ = ["OP_BACKENDS", "favor_attention", "favor_attention_step", "linear_attention"]

PathName = Literal["fused", "generic"]
PATHS: tuple[str, ...] = ("fused", "generic")
BackendName = Literal["auto", "torch", "triton"]
# The `backend=` of favor_attention / favor_attention_step: which implementation runs a call
# (not the attention of a layer, performers.layers.ATTENTION_BACKENDS).
OP_BACKENDS: tuple[str, ...] = ("auto", "torch", "triton")


def linear_attention(
    q_features: Tensor,
    k_features: Tensor,
    v: Tensor,
    *,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    enable_gqa: bool = False,
    key_padding_mask: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    initial_state: FavorState | None = None,
    return_state: bool = False,
    eps: float | None = None,
    causal: bool | None = None,
    cu_seqlens: Tensor | None = None,
) -> Tensor | tuple[Tensor, FavorState]:
    """Normalized linear attention ``diag(Q'K'ᵀ1)⁻¹ Q'(K'ᵀV)`` for features you computed.

    Args:
        q_features: ``(B, H, Lq, M)``.
        k_features: ``(B, Hkv, Lk, M)``, in the dtype of ``q_features``.
        v: ``(B, Hkv, Lk, Dv)``, in that dtype too (TypeError otherwise, as SDPA).
        attn_mask, is_causal, enable_gqa, key_padding_mask: as in :func:`favor_attention`.
        chunk_size, initial_state, return_state: causal form only, see
            :func:`performers.ops.causal.generic.causal_linear_attention`; the state has
            ``(B, H, M, Dv)`` sums in the features' dtype (checked; a state's ``kernel`` is not,
            since features carry no kernel).
        eps: denominator guard (see :func:`performers.ops.numerics.guarded_divide`).
        causal: older spelling of ``is_causal``.
        cu_seqlens: a packed batch, as in :func:`favor_attention`: features ``(1, H, T, M)``
            holding ``N`` sequences, ``(N+1,)`` int boundaries; states ``(N, H, M, Dv)``.

    Returns:
        ``(B, H, Lq, Dv)``, and the final :class:`FavorState` if ``return_state``.
    """
    causal = resolve_is_causal(is_causal, causal)
    validate_qkv(q_features, k_features, v, causal=causal and attn_mask is None, enable_gqa=enable_gqa)
    validate_mask(key_padding_mask, k_features.shape[0], k_features.shape[2])
    validate_devices(
        q_features=q_features,
        k_features=k_features,
        v=v,
        key_padding_mask=key_padding_mask,
        attn_mask=attn_mask if isinstance(attn_mask, Tensor) else None,  # a non-tensor: TypeError below
    )
    key_padding_mask, causal, bounds = resolve_masks(
        q_features, k_features, v, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
        causal=causal, enable_gqa=enable_gqa, cu_seqlens=cu_seqlens,
    )  # fmt: skip
    check_positive_int("chunk_size", chunk_size)
    check_state_options(causal, initial_state, return_state)
    if initial_state is not None:
        batch = q_features.shape[0] if bounds is None else len(bounds) - 1
        check_state(
            initial_state,
            name="initial_state",
            shape=(batch, q_features.shape[1], q_features.shape[-1], v.shape[-1]),
            inputs=f"q_features {shape_str(q_features)} and v {shape_str(v)}",
            kernel=None,
            dtype=q_features.dtype,
            input_dtype=q_features.dtype,
            device=q_features.device,
        )
    if bounds is not None and causal:
        # One pass over the row, restarting at each sequence (no loop over sequences).
        groups = kv_groups(q_features, k_features)
        if groups > 1:
            k_features, v = (t.repeat_interleave(groups, dim=1) for t in (k_features, v))
        return packed_causal_linear_attention(
            q_features, k_features, v, layout=packed_layout(bounds, q_features.device),
            chunk_size=chunk_size, initial_state=initial_state, return_state=return_state, eps=eps,
        )  # fmt: skip
    if bounds is not None:
        # Bidirectional: one call per sequence (checked above; see _run_packed_loop), exact; one
        # split per input, as packed_pieces does (a slice's backward fills a row-sized zero tensor).
        sizes = [end - start for start, end in itertools.pairwise(bounds)]
        pieces = zip(*(t.split(sizes, dim=2) for t in (q_features, k_features, v)), strict=True)
        results = [
            linear_attention(
                q_piece,
                k_piece,
                v_piece,
                is_causal=causal,
                enable_gqa=enable_gqa,
                chunk_size=chunk_size,
                eps=eps,
                initial_state=None if initial_state is None else initial_state.select(i),
                return_state=return_state,
            )
            for i, (q_piece, k_piece, v_piece) in enumerate(pieces)
        ]
        return join_pieces(results, return_state=return_state)
    if key_padding_mask is not None:
        k_features = k_features.masked_fill(key_padding_mask[:, None, :, None], 0.0)
    groups = kv_groups(q_features, k_features)
    if groups > 1 and not causal:
        # Queries do not interact: G query heads read one key/value head as G·Lq rows (exact).
        return _ungroup(
            bidirectional_linear_attention(_group(q_features, groups), k_features, v, eps), groups
        )
    if groups > 1:
        k_features, v = (t.repeat_interleave(groups, dim=1) for t in (k_features, v))
    if causal and q_features.shape[2] == 0:
        # No positions: one zero-feature position (it adds nothing to the state), then dropped.
        one = [F.pad(t, (0, 0, 0, 1)) for t in (q_features, k_features, v)]
        result = causal_linear_attention(
            *one, chunk_size=chunk_size, initial_state=initial_state, return_state=return_state, eps=eps
        )
        return (result[0][:, :, :0], result[1]) if return_state else result[:, :, :0]
    if causal:
        return causal_linear_attention(
            q_features,
            k_features,
            v,
            chunk_size=chunk_size,
            initial_state=initial_state,
            return_state=return_state,
            eps=eps,
        )
    return bidirectional_linear_attention(q_features, k_features, v, eps)


def kv_groups(q: Tensor, k: Tensor) -> int:
    """``G = H / Hkv``: query heads per key/value head (1 without grouped-query attention)."""
    return q.shape[1] // k.shape[1] if k.shape[1] else 1


def _group(q: Tensor, groups: int) -> Tensor:
    """``(B, Hkv·G, Lq, D)`` → ``(B, Hkv, G·Lq, D)``: query head ``h`` reads key/value head
    ``h // G``, as in SDPA's ``enable_gqa`` (``repeat_interleave`` of the key/value heads)."""
    b, h, lq, d = q.shape
    return q.reshape(b, h // groups, groups * lq, d)


def _ungroup(out: Tensor, groups: int) -> Tensor:
    """The inverse of :func:`_group` on the output ``(B, Hkv, G·Lq, Dv)``."""
    b, hkv, rows, dv = out.shape
    return out.reshape(b, hkv * groups, rows // groups, dv)


def favor_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    projection: Tensor | None = None,
    *,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    kernel: KernelLike = "softmax",
    key_padding_mask: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    initial_state: FavorState | None = None,
    return_state: bool = False,
    eps: float | None = None,
    block_size: int | None = None,
    backend: BackendName = "auto",
    recompute_features: bool = False,
    causal: bool | None = None,
    cu_seqlens: Tensor | None = None,
) -> Tensor | tuple[Tensor, FavorState]:
    """FAVOR attention: softmax (or generalized-kernel) attention in ``O(L·M·D)`` time.

    The keywords of ``F.scaled_dot_product_attention`` mean what they mean there:
    ``attn_mask``, ``dropout_p``, ``is_causal``, ``scale`` and ``enable_gqa`` (the projection,
    which SDPA does not have, is the fourth positional argument, so pass SDPA's by keyword).

    Args:
        q: ``(B, H, Lq, D)`` queries.
        k: ``(B, Hkv, Lk, D)`` keys (``Hkv = H`` unless ``enable_gqa``).
        v: ``(B, Hkv, Lk, Dv)`` values. ``q``, ``k`` and ``v`` share one dtype (TypeError
            otherwise, as SDPA).
        projection: ``(M, D)`` random projection (see :func:`performers.orthogonal_projection`);
            may be None only for generalized kernels, which then use ``f(x)`` directly. Any
            floating dtype: it is used in the dtype the call computes in (a float32 projection
            with bfloat16 inputs, as under autocast, is fine) and never sets the output dtype.
        attn_mask: SDPA's boolean mask, True = the query attends the key, of a shape that
            broadcasts to ``(B, H, Lq, Lk)``. FAVOR+ never forms the attention weights, so it
            applies the masks that factor into key padding: ``(B, 1, 1, Lk)``, or
            ``(B, 1, Lq, Lk)`` / ``(Lq, Lk)`` whose rows are all one key pattern, or that
            pattern combined with the causal lower triangle (which then implies
            ``is_causal``). Float (additive) masks and masks that do not factor are refused
            with the reason (:func:`performers.ops.masks.mask_key_padding`). A query that may
            attend no key gets 0 (SDPA gives NaN).
        dropout_p: accepted as 0 only (there are no attention weights to drop).
        is_causal: unidirectional attention (query ``i`` sees keys ``j ≤ i``); needs ``Lq == Lk``.
        scale: the softmax temperature of ``exp(scale·qᵀk)``, default ``1/√D``; ``q`` and ``k``
            are multiplied by ``√scale`` before the feature map.
        enable_gqa: grouped-query attention as in SDPA: ``k`` and ``v`` have ``Hkv`` heads
            dividing ``H`` and query head ``h`` reads key/value head ``h // (H / Hkv)``.
            Bidirectionally the ``G = H / Hkv`` query heads of a group run as ``G·Lq`` rows
            against their one key/value head (exact: queries do not interact; no key or value
            is copied). Causally, and for kernels whose parameters depend on the queries
            (``"favor++"``), the key/value heads are repeated (``repeat_interleave``); the
            causal state then has ``H`` heads.
        kernel: a registry name (``"softmax"``, ``"softmax-hyperbolic"``, ``"trig"``,
            ``"favor++"``, ``"relu"``, ``"elu"``, ``"abs"``, ``"exp"``, ``"sigmoid"``,
            ``"gelu"``, ``"tanh"``, ``"cos"``, ``"identity"`` (the paper's kernel sweep), the Gaussian-kernel
            ``"gaussian"``, ``"gaussian-hyperbolic"``, ``"gaussian-trig"``,
            ``"gaussian-favor++"``), a :class:`Kernel`, or a callable ``f``. ``"favor++"``
            computes its parameter ``A`` per (batch, head) from ``q`` and ``k`` (causal: from
            the first non-padded position, kept in the returned state; see
            :mod:`performers.ops.favor_plus_plus`) and takes the generic (non-fused) paths.
        key_padding_mask: ``(B, Lk)`` bool, True marks a padded key (as in
            ``nn.MultiheadAttention``; the opposite of ``attn_mask``'s convention); padded keys
            leave numerator and denominator alike. Combined with ``attn_mask``'s padding.
        chunk_size: positions per chunk of the causal algorithm, an int >= 1.
        initial_state: causal only, the state returned by an earlier call or by
            :func:`favor_attention_step`; the keys here continue that prefix. It is checked
            against the inputs (batch, heads, ``M'`` — the kernel's feature width for the
            projection, ``2M`` for the hyperbolic and trigonometric maps —, ``Dv``, kernel,
            dtype — float64 for float64 inputs, float32 otherwise — and device): a mismatch
            is a ValueError (TypeError for the dtype) naming both shapes.
        return_state: causal only, also return the state after the last position.
        eps: denominator guard, default the dtype's smallest normal number.
        block_size: None or an int >= 1; bidirectional exponential kernels only: positions per
            block of the fused path (:mod:`performers.ops.bidirectional.fused`); default sized
            for the cache.
        backend: ``"auto"`` (the Triton kernels of :mod:`performers.ops.triton` for CUDA
            tensors when triton is installed and the kernel has an exponential form, the
            PyTorch paths otherwise), ``"torch"``, or ``"triton"`` (those kernels, also for CPU
            tensors under ``TRITON_INTERPRET=1``; a ValueError saying why when they cannot serve
            the inputs). The Triton kernels choose their own tiles (``chunk_size`` and
            ``block_size`` are ignored); results agree within the dtype's rounding.
        recompute_features: the fused bidirectional path recomputes the query features in
            backward instead of keeping the ``(B, H, Lq, M)`` tensor (with ``M`` above the head
            dimension the largest one a layer keeps): less memory, about one more feature pass
            of time. Gradients are identical. Other paths already recompute or need autograd.
        causal: older spelling of ``is_causal`` (giving it with ``is_causal=True`` is a TypeError).
        cu_seqlens: a packed batch (the FlashAttention convention): ``q``, ``k``, ``v`` of shape
            ``(1, H, T, D)`` hold ``N`` sequences back to back and ``cu_seqlens`` — a 1-D
            int32/int64 tensor ``(N+1,)``, strictly increasing from 0 to ``T`` — their
            boundaries. Each sequence attends within itself only (bidirectional or causal), with
            its own stabilizer and FAVOR++ parameters: the result equals one call per sequence.
            ``initial_state`` and the returned state are ``(N, H, M', Dv)``, one row per
            sequence (decode one of them with ``state.select(i)``). Refused with
            ``key_padding_mask`` or ``attn_mask`` (packing replaces padding), with a batch other
            than 1, and for query and key lengths that differ. Every path and kernel serves it:
            on the PyTorch paths causal calls run in one pass over the row that restarts at
            each sequence, and bidirectional calls on the fused path in two autograd Functions
            over the whole row (one key summary per sequence); other bidirectional kernels run
            one call per sequence, the Triton kernels once per pass for all sequences (see
            :func:`_run_packed`).

    Returns:
        ``(B, H, Lq, Dv)`` in the dtype of the inputs (float32 inputs under bfloat16 autocast
        run as bfloat16 and return bfloat16, as SDPA does), and the :class:`FavorState`
        (float32 or float64, recording the kernel's name) if ``return_state``.
    """
    call = check_favor_call(
        q, k, v, projection, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, causal=causal,
        scale=scale, enable_gqa=enable_gqa, kernel=kernel, key_padding_mask=key_padding_mask,
        chunk_size=chunk_size, block_size=block_size, initial_state=initial_state, return_state=return_state,
        eps=eps, backend=backend, recompute_features=recompute_features, cu_seqlens=cu_seqlens,
    )  # fmt: skip
    return _run(call, path=None)


def triton_map_for(
    backend: str, kernel: Kernel, projection: Tensor | None, q: Tensor, v: Tensor, *, step: bool = False
) -> TritonMap | None:
    """The feature map the Triton kernels run for this call (:mod:`performers.ops.triton.paths`),
    or None for the PyTorch paths; ValueError saying why when ``backend="triton"`` cannot."""
    if backend not in OP_BACKENDS:
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    if backend == "torch" or (backend == "auto" and q.device.type != "cuda"):
        return None
    from performers.ops.triton import triton_unavailable_reason
    from performers.ops.triton.paths import triton_map

    found = triton_map(kernel, projection, q, v, step=step)
    reason = found if isinstance(found, str) else triton_unavailable_reason(q.device)
    if backend == "triton" and reason is not None:
        raise ValueError(f"backend='triton' cannot serve these inputs: {reason}")
    return None if reason is not None else found


def _autocast_inputs(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Under bfloat16 autocast, float32 inputs run as bfloat16 (and the output is bfloat16), as
    autocast's matmuls and SDPA do: the fused paths then compute their products in bfloat16."""
    device = q.device.type
    if not torch.is_autocast_enabled(device) or torch.get_autocast_dtype(device) != torch.bfloat16:
        return q, k, v
    low = [t.to(torch.bfloat16) if t.dtype == torch.float32 else t for t in (q, k, v)]
    return low[0], low[1], low[2]


def _fused_unavailable(kernel: Kernel, projection: Tensor | None) -> str | None:
    """Why the fused path cannot serve these inputs, or None when it can."""
    if kernel.exp_form is None:
        return f"kernel {kernel.name!r} has no exponential form (Kernel.exp_form is None)"
    if projection is None:
        return "the exponential kernels need a projection"
    return None


def _favor_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    projection: Tensor | None = None,
    *,
    path: PathName | None = None,
    segment_chunks: int = SEGMENT_CHUNKS,
    **options,
) -> Tensor | tuple[Tensor, FavorState]:
    """:func:`favor_attention` on a path chosen by name (private: for tests and benchmarks).

    Args:
        path: ``"fused"``, ``"generic"`` or None (automatic: fused whenever it can serve the
            inputs, the Triton kernels as ``backend`` says). ``"fused"`` raises ValueError
            saying why when it cannot.
        segment_chunks: chunks per segment of the fused causal path.
        options: the keywords of :func:`favor_attention`.
    """
    call = check_favor_call(q, k, v, projection, segment_chunks=segment_chunks, **options)
    return _run(call, path=path)


def _run(
    call: FavorCall, *, path: PathName | None, report: bool = True
) -> Tensor | tuple[Tensor, FavorState]:
    """The choice of path for a checked call, and the call to its direction (``report``: check
    the causal output for underflowed rows; a packed call checks its whole row once)."""
    q, k, v = _autocast_inputs(call.q, call.k, call.v)
    if q is not call.q or k is not call.k or v is not call.v:
        call = call.replace(q=q, k=k, v=v)
    if path is not None and path not in PATHS:
        raise ValueError(f"path must be None, 'fused' or 'generic', got {path!r}")
    if call.cu_seqlens is not None:
        return _run_packed(call, path=path)
    groups = kv_groups(call.q, call.k)
    if groups > 1 and not call.causal and call.kernel.parameters is None:
        # Queries do not interact: the G query heads of a group run as G·Lq rows against their
        # one key/value head (exact; no key or value copied). A kernel whose parameters come
        # from the queries (FAVOR++) would pool them over the group: it takes the repeat below.
        grouped = call.replace(q=_group(call.q, groups))
        return _ungroup(_run(grouped, path=path, report=report), groups)
    if groups > 1:
        # Causal: every query head's prefix state is its key/value head's (the same sums G
        # times); the causal paths take one query per position, so the heads are repeated.
        call = call.replace(
            k=call.k.repeat_interleave(groups, dim=1), v=call.v.repeat_interleave(groups, dim=1)
        )
    unavailable = _fused_unavailable(call.kernel, call.projection)
    if path == "fused" and unavailable is not None:
        raise ValueError(f"path='fused' cannot serve these inputs: {unavailable}")
    fused = unavailable is None if path is None else path == "fused"
    # The Triton kernels serve the call (computed once: the run and the underflow report use it).
    triton_map = None
    if path is None:
        triton_map = triton_map_for(call.backend, call.kernel, call.projection, call.q, call.v)
    if (fused or call.causal or triton_map is not None) and torch.compiler.is_compiling():
        # The fused Functions, the causal chunk loop and the Triton launches loop over blocks
        # of positions in Python, which torch.compile would unroll and specialize on the
        # length (a recompile per length). Run eagerly, the fused paths are also faster than
        # what inductor makes of the loop-free generic path (measured: docs/guides/attention.md,
        # "torch.compile"), so the compiled graph calls them as they are (a graph break); only
        # the bidirectional generic path is traced.
        return _run_eagerly(call, fused=fused, triton_map=triton_map, report=report)
    return _run_direction(call, fused=fused, triton_map=triton_map, report=report)


@torch.compiler.disable
def _run_eagerly(
    call: FavorCall, *, fused: bool, triton_map: TritonMap | None, report: bool
) -> Tensor | tuple[Tensor, FavorState]:
    """:func:`_run_direction` outside the compiled graph (a graph break around it).

    The output is returned as a contiguous tensor of its own: the graph after the break guards
    on its strides and on whether it is a view, and the causal path returns a view of its
    padded output whose strides depend on the length."""
    result = _run_direction(call, fused=fused, triton_map=triton_map, report=report)
    if isinstance(result, tuple):
        return _own_contiguous(result[0]), result[1]
    return _own_contiguous(result)


def _own_contiguous(t: Tensor) -> Tensor:
    """``t``, or a contiguous copy of it when it is a view or not contiguous."""
    return t if t._base is None and t.is_contiguous() else t.clone(memory_format=torch.contiguous_format)


def _run_direction(
    call: FavorCall, *, fused: bool, triton_map: TritonMap | None, report: bool = True
) -> Tensor | tuple[Tensor, FavorState]:
    """The call to the direction that runs a call on the chosen path (``report``: check the
    causal output for underflowed rows)."""
    if not call.causal:
        return bidirectional_favor_attention(call, fused=fused, triton_map=triton_map)
    if call.q.shape[2] == 0:
        # No positions: the result of one padded position, less that position (the output is
        # empty and the state is the initial one), still connected to q, k and v.
        one = [F.pad(t, (0, 0, 0, 1)) for t in (call.q, call.k, call.v)]
        empty = torch.ones(call.q.shape[0], 1, dtype=torch.bool, device=call.q.device)
        padded = call.replace(q=one[0], k=one[1], v=one[2], key_padding_mask=empty)
        result = causal_favor_attention(padded, fused=fused, triton_map=triton_map)
        if call.return_state:
            return result[0][:, :, :0], result[1]._replace(kernel=call.kernel.name)
        return result[:, :, :0]
    result = causal_favor_attention(call, fused=fused, triton_map=triton_map)
    # Causal keys are stored under their running maximum: at large logits a query row can
    # underflow to zero, which is reported. Bidirectional paths cannot underflow a row.
    out = result[0] if call.return_state else result
    if report:
        warn_zero_rows(out, call.v, call.key_padding_mask, call.initial_state, causal=True, stacklevel=4)
    if call.return_state:
        # The state records its kernel, so a later call with another kernel is refused.
        return out, result[1]._replace(kernel=call.kernel.name)
    return result


def _run_packed(call: FavorCall, *, path: PathName | None) -> Tensor | tuple[Tensor, FavorState]:
    """A packed call (``cu_seqlens``).

    * One sequence: the unpacked call itself.
    * Bidirectional on the fused path (exponential kernels with a projection, PyTorch backend):
      the whole row in two autograd Functions
      (:func:`performers.ops.bidirectional.favor.packed_bidirectional_favor_attention`): one key
      summary and one set of per-feature key maxima per sequence, each query block read
      against its sequence's summary; loops over sequences and blocks of positions inside the
      Functions' forward and backward, two graph nodes whatever ``N``. Grouped query heads
      included; second derivatives by recomputation, as the unpacked fused Functions.
    * Causal on the PyTorch paths: one pass over the row that restarts at each sequence
      (:func:`performers.ops.causal.favor.packed_causal_favor_attention`), no loop over
      sequences — per-sequence stabilizers, FAVOR++ parameters, states in and out; its generic
      form (states, maps off the fused path) takes a long row as a few groups of whole
      sequences, each with about 2²¹ feature elements.
    * The Triton kernels: :func:`_run_packed_triton`, one launch per pass for every sequence
      (varlen kernels; causal: per-sequence states in and out).
    * Otherwise — bidirectional kernels off the fused path (FAVOR++, ``relu``, the
      trigonometric maps, callables), a registered map whose causal parameters are not
      FAVOR++'s —: :func:`_run_packed_loop`, one call per sequence. The generic bidirectional
      path differentiates each kernel's feature map by autograd, and summing one key summary
      per sequence from materialized features in autograd measured 2–4× slower on CPU than
      this loop (docs/guides/attention.md).
    """
    bounds = call.cu_seqlens or ()  # set: _run sends only packed calls here
    if len(bounds) == 2:
        return _run(call.replace(cu_seqlens=None), path=path)
    unavailable = _fused_unavailable(call.kernel, call.projection)
    if path == "fused" and unavailable is not None:
        raise ValueError(f"path='fused' cannot serve these inputs: {unavailable}")
    triton_map = None
    if path is None:
        triton_map = triton_map_for(call.backend, call.kernel, call.projection, call.q, call.v)
    if triton_map is not None:
        from performers.ops.triton.paths import packed_reason

        if packed_reason(bounds, call.q, call.v, causal=call.causal) is not None:
            return _run_packed_loop(call, path=path)  # (more sequences than a grid axis holds)
        result = _run_packed_triton(call, triton_map)
        if call.causal:  # one underflow check of the whole row (see _run_packed_loop)
            out = result[0] if call.return_state else result
            valued = (
                (call.v != 0).any(dim=-1, keepdim=True).repeat_interleave(kv_groups(call.q, call.k), dim=1)
            )
            warn_zero_rows(
                out, valued, None, call.initial_state, causal=True, stacklevel=5, cu_seqlens=bounds
            )
        return result
    fused = unavailable is None if path is None else path == "fused"
    if not call.causal and fused:
        # The whole row in two fused Functions (one summary per sequence, no per-sequence nodes).
        if torch.compiler.is_compiling():
            return _packed_bidirectional_eagerly(call)
        return packed_bidirectional_favor_attention(call)
    if not call.causal:
        # Kernels off the fused path: one call per sequence. A loop-free form summing
        # per-sequence key summaries from materialized features (autograd) measured slower on
        # CPU than the loop (1.19 s vs 0.27 s forward, 2.03 s vs 0.86 s forward+backward at
        # N = 64, softmax).
        return _run_packed_loop(call, path=path)
    if not serves_kernel(call.kernel):
        return _run_packed_loop(call, path=path)  # parameters that may read a whole sequence
    # Which keys carry a value, per query head, for the underflow report (before the repeat).
    groups = kv_groups(call.q, call.k)
    valued = (call.v != 0).any(dim=-1, keepdim=True).repeat_interleave(groups, dim=1)
    if groups > 1:  # causal: every query head reads its key/value head's prefix (see _run)
        call = call.replace(
            k=call.k.repeat_interleave(groups, dim=1), v=call.v.repeat_interleave(groups, dim=1)
        )
    if torch.compiler.is_compiling():
        result = _packed_causal_eagerly(call, fused=fused)
    else:
        result = packed_causal_favor_attention(call, fused=fused)
    out = result[0] if call.return_state else result
    warn_zero_rows(out, valued, None, call.initial_state, causal=True, stacklevel=5, cu_seqlens=bounds)
    if call.return_state:
        return out, result[1]._replace(kernel=call.kernel.name)
    return out


@torch.compiler.disable
def _run_packed_triton(call: FavorCall, triton_map: TritonMap) -> Tensor | tuple[Tensor, FavorState]:
    """A packed call on the varlen Triton kernels: one launch per pass for all sequences, states
    ``(N, H, ·)`` in and out (outside a compiled graph, as :func:`_run_eagerly`). Grouped
    key/value heads are repeated (the grouped-rows form of :func:`_run` would interleave the
    sequences; causal calls repeat them anyway)."""
    from performers.ops.triton.paths import triton_attention

    groups = kv_groups(call.q, call.k)
    k, v = (t.repeat_interleave(groups, dim=1) if groups > 1 else t for t in (call.k, call.v))
    result = triton_attention(
        call.q, k, v, triton_map, causal=call.causal, scale=call.input_scale, key_padding_mask=None,
        initial_state=call.initial_state, return_state=call.return_state, eps=call.eps,
        cu_seqlens=call.cu_seqlens,
    )  # fmt: skip
    if call.return_state:
        out, state = result
        return _own_contiguous(out.to(call.out_dtype)), state._replace(kernel=call.kernel.name)
    return _own_contiguous(result.to(call.out_dtype))


@torch.compiler.disable
def _packed_causal_eagerly(call: FavorCall, *, fused: bool) -> Tensor | tuple[Tensor, FavorState]:
    """:func:`packed_causal_favor_attention` outside a compiled graph (its chunk loops would be
    unrolled per length; see :func:`_run_eagerly`)."""
    result = packed_causal_favor_attention(call, fused=fused)
    if isinstance(result, tuple):
        return _own_contiguous(result[0]), result[1]
    return _own_contiguous(result)


@torch.compiler.disable
def _packed_bidirectional_eagerly(call: FavorCall) -> Tensor:
    """:func:`packed_bidirectional_favor_attention` outside a compiled graph (its loops over
    sequences and blocks would be unrolled per layout; see :func:`_run_eagerly`)."""
    return _own_contiguous(packed_bidirectional_favor_attention(call))


def _run_packed_loop(call: FavorCall, *, path: PathName | None) -> Tensor | tuple[Tensor, FavorState]:
    """A packed call as one call per sequence on the path the unpacked call would take, the
    outputs concatenated back along the positions (the states stacked along the batch).

    Exact by construction — per-sequence stabilizers, FAVOR++ parameters, causal resets and
    states — for every kernel, path and backend, and the gradients (double backward included)
    are those of the per-sequence calls. The loop is over sequences, never positions: every
    call still runs its path's vectorized algorithm over its positions. Its cost is one call's
    fixed overhead per sequence (``performers bench packed-ops`` measures it). It serves
    bidirectional calls off the fused path (and Triton calls of more sequences than a grid
    axis holds), and is the reference the loop-free causal path, the fused packed
    bidirectional Functions and the varlen Triton kernels are tested against
    (``tests/ops/test_packed_causal.py``, ``tests/ops/test_packed_bidirectional.py``,
    ``tests/ops/test_triton_packed.py``).
    """
    bounds = call.cu_seqlens or ()
    pieces = packed_pieces(call, [(i, i + 1) for i in range(len(bounds) - 1)], unpack_single=True)
    result = join_pieces(
        [_run(one, path=path, report=False) for one in pieces], return_state=call.return_state
    )
    out = result[0] if call.return_state else result
    if call.causal:
        # One underflow check of the whole row (per sequence it would cost a sync each).
        # (Which keys carry a value, per query head: grouped key/value heads repeated.)
        valued = (call.v != 0).any(dim=-1, keepdim=True).repeat_interleave(kv_groups(call.q, call.k), dim=1)
        warn_zero_rows(out, valued, None, call.initial_state, causal=True, stacklevel=5, cu_seqlens=bounds)
    return result


def favor_attention_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    state: FavorState | None,
    projection: Tensor | None = None,
    *,
    kernel: KernelLike = "softmax",
    scale: float | None = None,
    enable_gqa: bool = False,
    eps: float | None = None,
    backend: BackendName = "auto",
    inplace: bool = False,
    check_inputs: bool = True,
) -> tuple[Tensor, FavorState]:
    """Causal FAVOR attention for one new position, from the recurrent state: ``O(M·D)``.

    Args:
        q, k: ``(B, H, 1, D)`` and ``(B, Hkv, 1, D)``; v: ``(B, Hkv, 1, Dv)`` — the new
            position, in one dtype (``Hkv = H`` unless ``enable_gqa``).
        state: the state after the previous positions (from ``favor_attention(...,
            is_causal=True, return_state=True)`` or an earlier step), or None at the start.
            Checked against the inputs as ``initial_state`` is in :func:`favor_attention`
            (batch, heads, ``M'``, ``Dv``, kernel, dtype, device; errors name both shapes).
        projection, kernel, scale, eps: as in :func:`favor_attention`.
        enable_gqa: ``k`` and ``v`` with ``Hkv`` heads dividing ``H``, as in
            :func:`favor_attention`: they are repeated to ``H`` heads (one position: cheap), and
            the state has ``H`` heads, as the causal parallel call returns it.
        backend: as in :func:`favor_attention`; the Triton step is one fused kernel without
            autograd, so ``"auto"`` uses it only when no gradient is being recorded and
            ``"triton"`` refuses inputs that require one.
        inplace: update ``state``'s tensors in place and return them in the new state, as a
            decoding loop does with its cache (no new ``M×Dv`` tensor per token); exponential
            kernels on the PyTorch path, outside autograd; elsewhere the update is out of place.
        check_inputs: False skips the shape, projection and state checks, for a decoding loop
            whose inputs were checked once (per token they cost as much as a few tensor
            operations).

    Returns:
        ``(out, state)``: ``out`` of shape ``(B, H, 1, Dv)`` equal (up to rounding) to position
        ``t`` of the parallel causal output, and the updated state (recording the kernel's name).
    """
    kern = get_kernel(kernel)
    if check_inputs:
        validate_qkv(q, k, v, causal=True, enable_gqa=enable_gqa)
        if q.shape[2] != 1:
            raise ValueError(
                f"favor_attention_step takes one position: q must be (B, H, 1, D), got {shape_str(q)}"
            )
        validate_projection(projection, kern, q.shape[-1])
        validate_devices(q=q, k=k, v=v, projection=projection)
        if state is not None:
            check_initial_state(state, q, v, projection, kern, name="state")
    groups = kv_groups(q, k)
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    root_scale = input_scale(scale, q.shape[-1]) ** 0.5
    out_dtype = q.dtype
    recording = torch.is_grad_enabled() and any(
        isinstance(t, Tensor) and t.requires_grad for t in (q, k, v, projection, *(state or ()))
    )
    if backend == "triton" and recording:
        raise ValueError("backend='triton' cannot serve these inputs: the Triton step has no backward")
    triton_map = None if recording else triton_map_for(backend, kern, projection, q, v, step=True)
    if triton_map is not None:
        from performers.ops.triton.paths import triton_step

        out, new_state = triton_step(q, k, v, state, triton_map, scale=root_scale, eps=eps)
        return out.to(out_dtype), new_state._replace(kernel=kern.name)
    dtype = compute_dtype(q, k, v)
    with torch.autocast(device_type=q.device.type, enabled=False):
        if kern.exp_form is not None and projection is not None:
            # Exponential maps: the few-op step (decoding is dominated by the number of ops).
            q, k, v, projection = (t if t.dtype == dtype else t.to(dtype) for t in (q, k, v, projection))
            out, new_state = exp_attention_step(
                q, k, v, state, kern.exp_form(projection), scale=root_scale, eps=eps, inplace=inplace
            )
        else:
            out, new_state = generic_attention_step(
                q.to(dtype), k.to(dtype), v.to(dtype), state, kern, projection, scale=root_scale, eps=eps
            )
    # The state records its kernel, so a later step with another kernel is refused.
    return (out if out.dtype == out_dtype else out.to(out_dtype)), new_state._replace(kernel=kern.name)
