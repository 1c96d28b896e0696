"""FAVOR attention entry points: input checks and the choice of path, nothing else.

``favor_attention`` mirrors the keyword style of ``F.scaled_dot_product_attention``: inputs
``(B, H, L, D)``, an optional ``scale`` (default ``1/√D``), ``causal`` for the unidirectional
form. Inputs in float16/bfloat16 are computed in float32 (with autocast disabled inside) and
the output is returned in the input dtype — except bfloat16 inputs on the fused paths
(bidirectional and causal), whose products run in bfloat16 (sums, maxima, normalizers and the
causal state in float32; the returned state is float32).

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

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from performers.ops.bidirectional.favor import bidirectional_favor_attention
from performers.ops.bidirectional.generic import bidirectional_linear_attention
from performers.ops.call import FavorCall, check_favor_call, check_state_options, compute_dtype, input_scale
from performers.ops.causal.favor import causal_favor_attention
from performers.ops.causal.generic import causal_linear_attention
from performers.ops.causal.recurrent import exp_attention_step, generic_attention_step
from performers.ops.checks import (
    check_positive_int,
    shape_str,
    validate_devices,
    validate_mask,
    validate_projection,
    validate_qkv,
)
from performers.ops.kernels import Kernel, KernelLike, get_kernel
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
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    initial_state: FavorState | None = None,
    return_state: bool = False,
    eps: float | None = None,
) -> Tensor | tuple[Tensor, FavorState]:
    """Normalized linear attention ``diag(Q'K'ᵀ1)⁻¹ Q'(K'ᵀV)`` for features you computed.

    Args:
        q_features: ``(B, H, Lq, M)``.
        k_features: ``(B, H, Lk, M)``.
        v: ``(B, H, Lk, Dv)``.
        causal: unidirectional (prefix-sum) form; needs ``Lq == Lk``.
        key_padding_mask: ``(B, Lk)`` bool, True marks a padded key: it is removed from both
            the numerator and the denominator.
        chunk_size, initial_state, return_state: causal form only, see
            :func:`performers.ops.causal.generic.causal_linear_attention`.
        eps: denominator guard (see :func:`performers.ops.numerics.guarded_divide`).

    Returns:
        ``(B, H, Lq, Dv)``, and the final :class:`FavorState` if ``return_state``.
    """
    validate_qkv(q_features, k_features, v, causal=causal)
    validate_mask(key_padding_mask, k_features.shape[0], k_features.shape[2])
    validate_devices(
        q_features=q_features, k_features=k_features, v=v, key_padding_mask=key_padding_mask,
        **({} if initial_state is None else {"initial_state": initial_state.kv}),
    )  # fmt: skip
    check_positive_int("chunk_size", chunk_size)
    check_state_options(causal, initial_state, return_state)
    if key_padding_mask is not None:
        k_features = k_features.masked_fill(key_padding_mask[:, None, :, None], 0.0)
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


def favor_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    projection: Tensor | None = None,
    *,
    causal: bool = False,
    kernel: KernelLike = "softmax",
    scale: float | None = None,
    key_padding_mask: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    initial_state: FavorState | None = None,
    return_state: bool = False,
    eps: float | None = None,
    block_size: int | None = None,
    backend: BackendName = "auto",
    recompute_features: bool = False,
) -> Tensor | tuple[Tensor, FavorState]:
    """FAVOR attention: softmax (or generalized-kernel) attention in ``O(L·M·D)`` time.

    Args:
        q: ``(B, H, Lq, D)`` queries.
        k: ``(B, H, Lk, D)`` keys.
        v: ``(B, H, Lk, Dv)`` values.
        projection: ``(M, D)`` random projection (see :func:`performers.orthogonal_projection`);
            may be None only for generalized kernels, which then use ``f(x)`` directly.
        causal: unidirectional attention (query ``i`` sees keys ``j ≤ i``); needs ``Lq == Lk``.
        kernel: a registry name (``"softmax"``, ``"softmax-hyperbolic"``, ``"trig"``,
            ``"favor++"``, ``"relu"``, ``"elu"``, ``"abs"``, ``"exp"``, ``"sigmoid"``,
            ``"gelu"``, ``"tanh"``, ``"cos"``, ``"identity"`` (the paper's kernel sweep), the Gaussian-kernel
            ``"gaussian"``, ``"gaussian-hyperbolic"``, ``"gaussian-trig"``,
            ``"gaussian-favor++"``), a :class:`Kernel`, or a callable ``f``. ``"favor++"``
            computes its parameter ``A`` per (batch, head) from ``q`` and ``k`` (causal: from
            the first non-padded position, kept in the returned state; see
            :mod:`performers.ops.favor_plus_plus`) and takes the generic (non-fused) paths.
        scale: the softmax temperature of ``exp(scale·qᵀk)``, default ``1/√D``; ``q`` and ``k``
            are multiplied by ``√scale`` before the feature map.
        key_padding_mask: ``(B, Lk)`` bool, True marks a padded key (as in
            ``nn.MultiheadAttention``); padded keys leave numerator and denominator alike.
        chunk_size: positions per chunk of the causal algorithm, an int >= 1.
        initial_state: causal only, the state returned by an earlier call or by
            :func:`favor_attention_step`; the keys here continue that prefix.
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

    Returns:
        ``(B, H, Lq, Dv)`` in the dtype of the inputs (float32 inputs under bfloat16 autocast
        run as bfloat16 and return bfloat16, as SDPA does), and the :class:`FavorState`
        (float32 or float64) if ``return_state``.
    """
    call = check_favor_call(
        q, k, v, projection, causal=causal, kernel=kernel, scale=scale, key_padding_mask=key_padding_mask,
        chunk_size=chunk_size, block_size=block_size, initial_state=initial_state, return_state=return_state,
        eps=eps, backend=backend, recompute_features=recompute_features,
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


def _run(call: FavorCall, *, path: PathName | None) -> Tensor | tuple[Tensor, FavorState]:
    """The choice of path for a checked call, and the call to its direction."""
    q, k, v = _autocast_inputs(call.q, call.k, call.v)
    if q is not call.q or k is not call.k or v is not call.v:
        call = call.replace(q=q, k=k, v=v)
    if path is not None and path not in PATHS:
        raise ValueError(f"path must be None, 'fused' or 'generic', got {path!r}")
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
        return _run_eagerly(call, fused=fused, triton_map=triton_map)
    return _run_direction(call, fused=fused, triton_map=triton_map)


@torch.compiler.disable
def _run_eagerly(
    call: FavorCall, *, fused: bool, triton_map: TritonMap | None
) -> Tensor | tuple[Tensor, FavorState]:
    """:func:`_run_direction` outside the compiled graph (a graph break around it).

    The output is returned as a contiguous tensor of its own: the graph after the break guards
    on its strides and on whether it is a view, and the causal path returns a view of its
    padded output whose strides depend on the length."""
    result = _run_direction(call, fused=fused, triton_map=triton_map)
    if isinstance(result, tuple):
        return _own_contiguous(result[0]), result[1]
    return _own_contiguous(result)


def _own_contiguous(t: Tensor) -> Tensor:
    """``t``, or a contiguous copy of it when it is a view or not contiguous."""
    return t if t._base is None and t.is_contiguous() else t.clone(memory_format=torch.contiguous_format)


def _run_direction(
    call: FavorCall, *, fused: bool, triton_map: TritonMap | None
) -> Tensor | tuple[Tensor, FavorState]:
    """The call to the direction that runs a call on the chosen path."""
    if not call.causal:
        return bidirectional_favor_attention(call, fused=fused, triton_map=triton_map)
    if call.q.shape[2] == 0:
        # No positions: the result of one padded position, less that position (the output is
        # empty and the state is the initial one), still connected to q, k and v.
        one = [F.pad(t, (0, 0, 0, 1)) for t in (call.q, call.k, call.v)]
        empty = torch.ones(call.q.shape[0], 1, dtype=torch.bool, device=call.q.device)
        padded = call.replace(q=one[0], k=one[1], v=one[2], key_padding_mask=empty)
        result = causal_favor_attention(padded, fused=fused, triton_map=triton_map)
        return (result[0][:, :, :0], result[1]) if call.return_state else result[:, :, :0]
    result = causal_favor_attention(call, fused=fused, triton_map=triton_map)
    # Causal keys are stored under their running maximum: at large logits a query row can
    # underflow to zero, which is reported. Bidirectional paths cannot underflow a row.
    out = result[0] if call.return_state else result
    warn_zero_rows(out, call.v, call.key_padding_mask, call.initial_state, causal=True, stacklevel=4)
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
    eps: float | None = None,
    backend: BackendName = "auto",
    inplace: bool = False,
    check_inputs: bool = True,
) -> tuple[Tensor, FavorState]:
    """Causal FAVOR attention for one new position, from the recurrent state: ``O(M·D)``.

    Args:
        q, k: ``(B, H, 1, D)``; v: ``(B, H, 1, Dv)`` — the new position.
        state: the state after the previous positions (from ``favor_attention(...,
            causal=True, return_state=True)`` or an earlier step), or None at the start.
        projection, kernel, scale, eps: as in :func:`favor_attention`.
        backend: as in :func:`favor_attention`; the Triton step is one fused kernel without
            autograd, so ``"auto"`` uses it only when no gradient is being recorded and
            ``"triton"`` refuses inputs that require one.
        inplace: update ``state``'s tensors in place and return them in the new state, as a
            decoding loop does with its cache (no new ``M×Dv`` tensor per token); exponential
            kernels on the PyTorch path, outside autograd; elsewhere the update is out of place.
        check_inputs: False skips the shape and projection checks, for a decoding loop whose
            inputs were checked once (per token they cost as much as a few tensor operations).

    Returns:
        ``(out, state)``: ``out`` of shape ``(B, H, 1, Dv)`` equal (up to rounding) to position
        ``t`` of the parallel causal output, and the updated state.
    """
    kern = get_kernel(kernel)
    if check_inputs:
        validate_qkv(q, k, v, causal=True)
        if q.shape[2] != 1:
            raise ValueError(
                f"favor_attention_step takes one position: q must be (B, H, 1, D), got {shape_str(q)}"
            )
        validate_projection(projection, kern, q.shape[-1])
    root_scale = input_scale(scale, q.shape[-1]) ** 0.5
    out_dtype = torch.promote_types(q.dtype, v.dtype)
    recording = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, projection, *(state or ()))
    )
    if backend == "triton" and recording:
        raise ValueError("backend='triton' cannot serve these inputs: the Triton step has no backward")
    triton_map = None if recording else triton_map_for(backend, kern, projection, q, v, step=True)
    if triton_map is not None:
        from performers.ops.triton.paths import triton_step

        out, new_state = triton_step(q, k, v, state, triton_map, scale=root_scale, eps=eps)
        return out.to(out_dtype), new_state
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
    return (out if out.dtype == out_dtype else out.to(out_dtype)), new_state
