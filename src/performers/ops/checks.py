"""Input checks of the attention entry points: typed errors that name the argument and its shape."""

from __future__ import annotations

import torch
from torch import Tensor

from performers.ops.kernels import Kernel
from performers.utils.validation import is_int

__all__ = [
    "check_float",
    "check_positive_int",
    "shape_str",
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


def validate_qkv(q: Tensor, k: Tensor, v: Tensor, *, causal: bool) -> None:
    """``q`` ``(B, H, Lq, D)``, ``k`` ``(B, H, Lk, D)``, ``v`` ``(B, H, Lk, Dv)``; ``Lq == Lk`` if causal."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float(name, t)
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, L, D) with 4 dimensions, got {shape_str(t)}")
    if q.shape[:2] != k.shape[:2] or q.shape[:2] != v.shape[:2]:
        raise ValueError(
            "q, k and v must share batch and head sizes (B, H); "
            f"got q {shape_str(q)}, k {shape_str(k)}, v {shape_str(v)}"
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
