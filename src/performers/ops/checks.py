"""Input checks of the attention entry points: typed errors that name the argument and its shape."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from performers.ops.kernels import Kernel
from performers.ops.state import FavorState
from performers.utils.validation import is_int

__all__ = [
    "check_float",
    "check_positive_int",
    "check_state",
    "packed_boundaries",
    "shape_str",
    "validate_cu_seqlens",
    "validate_devices",
    "validate_mask",
    "validate_projection",
    "validate_qkv",
]


def shape_str(t: Tensor) -> str:
    """``(2, 3, 10, 8)``: a shape as the error messages print it."""
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_float(name: str, t: Tensor) -> None:
    """``t`` is a floating-point tensor (TypeError naming ``name`` otherwise)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {t.dtype}")


def check_positive_int(name: str, value: int | None, *, optional: bool = False) -> None:
    """``value`` is an int ``>= 1`` (bool is not), or None when ``optional`` (ValueError otherwise)."""
    if optional and value is None:
        return
    if not is_int(value) or value < 1:
        expected = "None or an int >= 1" if optional else "an int >= 1"
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def validate_qkv(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, enable_gqa: bool = False) -> None:
    """``q`` ``(B, H, Lq, D)``, ``k`` ``(B, Hkv, Lk, D)``, ``v`` ``(B, Hkv, Lk, Dv)`` in one dtype,
    with ``Hkv = H`` (or, with ``enable_gqa``, ``Hkv`` dividing ``H``); ``Lq == Lk`` if causal."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float(name, t)
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, L, D) with 4 dimensions, got {shape_str(t)}")
    if not q.dtype == k.dtype == v.dtype:
        # As F.scaled_dot_product_attention: a silent promotion would pick the output dtype.
        raise TypeError(
            f"q, k and v must have the same dtype (as F.scaled_dot_product_attention requires), "
            f"got q {q.dtype}, k {k.dtype}, v {v.dtype}"
        )
    if q.shape[0] != k.shape[0] or k.shape[:2] != v.shape[:2]:
        raise ValueError(
            "q, k and v must share batch and head sizes (B, H) (k and v: (B, Hkv) with enable_gqa); "
            f"got q {shape_str(q)}, k {shape_str(k)}, v {shape_str(v)}"
        )
    heads, kv_heads = q.shape[1], k.shape[1]
    if enable_gqa and (kv_heads == 0 or heads % kv_heads) and heads != kv_heads:
        raise ValueError(
            f"enable_gqa=True needs the head count of k and v (Hkv = {kv_heads}) to divide that of q "
            f"(H = {heads}); got q {shape_str(q)}, k {shape_str(k)}, v {shape_str(v)}"
        )
    if not enable_gqa and heads != kv_heads:
        raise ValueError(
            "q, k and v must share batch and head sizes (B, H) (pass enable_gqa=True for k and v "
            f"with fewer heads); got q {shape_str(q)}, k {shape_str(k)}, v {shape_str(v)}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must have the same last dimension D; got q {shape_str(q)}, k {shape_str(k)}"
        )
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must have the same length Lk; got k {shape_str(k)}, v {shape_str(v)}")
    if causal and q.shape[2] != k.shape[2]:
        raise ValueError(
            f"causal attention needs q and k of the same length L; got q {shape_str(q)}, k {shape_str(k)}"
        )


def packed_boundaries(cu_seqlens: Tensor, total: int, name: str = "cu_seqlens") -> tuple[int, ...]:
    """``cu_seqlens`` checked as the boundaries of ``total`` packed positions (typed errors naming
    ``name``): a 1-D int32/int64 tensor ``(N+1,)`` rising strictly from 0 to ``total``. Returns
    the boundaries as ints (read once; on a GPU this synchronizes). The one check of packed
    boundaries, for the ops and for the layers and models that pack."""
    if not isinstance(cu_seqlens, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(
            f"{name} must have an integer dtype, torch.int32 or torch.int64, got {cu_seqlens.dtype}"
        )
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
        raise ValueError(
            f"{name} must be 1-D of shape (N+1,) with N >= 1 sequences, got {shape_str(cu_seqlens)}"
        )
    bounds = tuple(int(b) for b in cu_seqlens.tolist())
    if bounds[0] != 0 or bounds[-1] != total:
        raise ValueError(
            f"{name} must rise strictly from 0 to T: start at 0 and end at T = {total} (the packed "
            f"length), got first {bounds[0]} and last {bounds[-1]}"
        )
    if any(b <= a for a, b in itertools.pairwise(bounds)):
        raise ValueError(
            f"{name} must rise strictly (strictly increasing, every sequence non-empty), got {list(bounds)}"
        )
    return bounds


def validate_cu_seqlens(cu_seqlens: Tensor, q: Tensor, k: Tensor, *, masked: bool) -> tuple[int, ...]:
    """The boundaries of a packed batch, checked (typed errors naming ``cu_seqlens``).

    ``cu_seqlens`` (the FlashAttention convention) is a 1-D int32/int64 tensor ``(N+1,)``,
    strictly increasing from 0 to ``T``: sequence ``i`` holds positions
    ``cu_seqlens[i]:cu_seqlens[i+1]`` of ``q``, ``k``, ``v``, which are ``(1, H, T, D)`` (queries
    and keys of one length: each sequence attends within itself). ``masked``: a
    ``key_padding_mask`` or ``attn_mask`` was given as well, which packing replaces (refused).
    Returns the boundaries as ints (:func:`packed_boundaries`)."""
    if q.shape[0] != 1:
        raise ValueError(
            f"with cu_seqlens, q, k and v hold the sequences back to back in one row: batch must be 1, "
            f"got q {shape_str(q)}"
        )
    if q.shape[2] != k.shape[2]:
        raise ValueError(
            f"with cu_seqlens, queries and keys are the same packed positions: q {shape_str(q)} and "
            f"k {shape_str(k)} must have one length"
        )
    if masked:
        raise ValueError(
            "cu_seqlens cannot be combined with key_padding_mask or attn_mask: a packed batch has "
            "no padding (each sequence attends within itself; pass is_causal for the causal form)"
        )
    return packed_boundaries(cu_seqlens, q.shape[2])


def validate_mask(mask: Tensor | None, batch: int, length: int) -> None:
    """``key_padding_mask`` is None or a bool ``(B, Lk)`` tensor."""
    if mask is None:
        return
    if not isinstance(mask, Tensor):
        raise TypeError(f"key_padding_mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be a bool tensor (True = padded key), got {mask.dtype}")
    if mask.shape != (batch, length):
        raise ValueError(
            f"key_padding_mask must have shape (B, Lk) = ({batch}, {length}), got {shape_str(mask)}"
        )


def validate_projection(projection: Tensor | None, kernel: Kernel, dim: int) -> None:
    """``projection`` is ``(M, D)`` with ``M >= 1`` and ``D = dim``, or None if the kernel allows it."""
    if projection is None:
        if kernel.requires_projection:
            raise ValueError(
                f"kernel {kernel.name!r} needs a projection of shape (M, D) with D = {dim}; "
                "build one with performers.orthogonal_projection(M, D, generator=...)"
            )
        return
    check_float("projection", projection)
    if projection.dim() != 2:
        raise ValueError(f"projection must have shape (M, D), got {shape_str(projection)}")
    if projection.shape[0] < 1:
        raise ValueError(f"projection must have M >= 1 rows (random features), got {shape_str(projection)}")
    if projection.shape[1] != dim:
        raise ValueError(
            f"projection must have shape (M, D) with D = {dim} (the head dimension), "
            f"got {shape_str(projection)}"
        )


def validate_devices(**tensors: Tensor | None) -> None:
    """Every given tensor (None entries skipped) is on the device of the first one (ValueError
    naming both otherwise): a ``meta`` projection with CPU inputs would otherwise compute on
    uninitialised memory, and mixed CPU/CUDA inputs fail deep inside a kernel."""
    named = [(name, t) for name, t in tensors.items() if t is not None]
    if not named:
        return
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{name} is on device {t.device} but {first_name} is on {first.device}; "
                "move every input to one device"
            )


_STATE_DIMS = {"kv": "(B, H, M', Dv)", "normalizer": "(B, H, M')", "log_offset": "(B, H)"}


def check_state(
    state: FavorState,
    *,
    name: str,
    shape: tuple[int, int, int, int],
    inputs: str,
    kernel: Kernel | None,
    dtype: torch.dtype,
    input_dtype: torch.dtype,
    device: torch.device,
) -> None:
    """``state`` continues the inputs of a call (typed errors naming both shapes otherwise).

    Args:
        state: the :class:`FavorState` passed as ``name`` (``"initial_state"``, ``"state"``).
        shape: ``(B, H, M', Dv)`` the inputs need: ``M'`` is the kernel's feature width for the
            projection (:meth:`Kernel.feature_dim <performers.ops.Kernel.feature_dim>`, ``2M``
            for the hyperbolic and trigonometric maps).
        inputs: how the inputs are named in messages (e.g. ``"q (1, 4, 5, 16), v (1, 4, 5, 8) with
            projection (16, 16) and kernel 'softmax'"``).
        kernel: the call's kernel, or None where there is none (features given directly).
        dtype: the dtype the call keeps its state in (float32 for float32 and half-precision
            inputs, float64 for float64 ones); input_dtype: that of the inputs, for messages;
            device: that of the inputs.
    """
    if not isinstance(state, FavorState):
        raise TypeError(
            f"{name} must be a FavorState (from return_state=True or favor_attention_step), "
            f"got {type(state).__name__}"
        )
    if kernel is not None and state.kernel is not None and state.kernel != kernel.name:
        raise ValueError(
            f"{name} was built by kernel {state.kernel!r}, but this call uses kernel {kernel.name!r}: "
            "a state continues only the feature map it was built with"
        )
    b, h, m, dv = shape
    for field, expected in (("kv", (b, h, m, dv)), ("normalizer", (b, h, m)), ("log_offset", (b, h))):
        t = getattr(state, field)
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}.{field} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != expected:
            raise ValueError(
                f"{name}.{field} has shape {shape_str(t)}, but {inputs} need {_STATE_DIMS[field]} = "
                f"({', '.join(map(str, expected))}): the state belongs to other inputs"
            )
        if t.dtype != dtype:
            raise TypeError(
                f"{name}.{field} is {t.dtype}, but this call keeps its state in {dtype} (the dtype its "
                f"{input_dtype} inputs accumulate in); convert the state or the inputs"
            )
        if t.device != device:
            raise ValueError(
                f"{name}.{field} is on device {t.device} but q is on {device}; move every input to one device"
            )
    if kernel is None:
        return
    params = state.kernel_params
    if kernel.parameters is not None:
        if not isinstance(params, Tensor):
            raise ValueError(
                f"kernel {kernel.name!r} continues from the (B, H) parameters (FAVOR++'s A) kept in the "
                f"state, but {name}.kernel_params is None: the state was built by another kernel"
            )
        if tuple(params.shape) != (b, h):
            raise ValueError(
                f"{name}.kernel_params has shape {shape_str(params)}, but {inputs} need (B, H) = ({b}, {h})"
            )
        if params.device != device:
            raise ValueError(
                f"{name}.kernel_params is on device {params.device} but q is on {device}; "
                "move every input to one device"
            )
    elif params is not None:
        raise ValueError(
            f"{name} carries kernel_params (data-dependent parameters of a kernel such as 'favor++'), "
            f"but kernel {kernel.name!r} has none: the state was built by another kernel"
        )
