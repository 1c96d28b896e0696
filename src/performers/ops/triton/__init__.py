"""FAVOR attention as Triton kernels, for CUDA tensors (and CPU tensors under ``TRITON_INTERPRET=1``).

Nothing here imports :mod:`triton` until a kernel is asked for: the package installs and runs
without it. The entry points are

* :func:`~performers.ops.triton.bidirectional.triton_bidirectional_attention`,
* :func:`~performers.ops.triton.causal.triton_causal_attention` (chunked, from any initial
  state, differentiable final state),
* :func:`~performers.ops.triton.decode.triton_attention_step` (one position, no autograd),

for the exponential feature maps (:class:`~performers.ops.features.ExpForm`: the positive and
hyperbolic maps of the softmax and Gaussian kernels) and the registry's generalized kernels
``f(x Pᵀ) + eps`` (relu, elu + 1, abs, exp; with or without a projection). They compute what
:mod:`performers.ops.bidirectional.fused` and :mod:`performers.ops.causal.fused` compute, with
the same stabilizers, and are tested against :mod:`performers.ops.naive` (through the Triton
interpreter on CPU). :func:`performers.favor_attention` chooses them with ``backend=``
(:mod:`performers.ops.triton.paths`).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

__all__ = [
    "FLOAT64_TRITON",
    "interpreter_enabled",
    "triton_available",
    "triton_unavailable_reason",
    "triton_version",
]

# The first triton whose compiler lowers float64 matrix products (3.6–3.8 stop at "fp64 don't
# support largeK MMA", checked with compile_check): float64 inputs need it on a GPU.
FLOAT64_TRITON = (3, 9)


def triton_available() -> bool:
    """Whether the ``triton`` package can be imported (without importing it)."""
    return importlib.util.find_spec("triton") is not None


@functools.cache
def triton_version() -> tuple[int, int] | None:
    """``(major, minor)`` of the installed triton (read from its metadata), or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor, *_ = version("triton").split(".")
        return int(major), int(minor)
    except (PackageNotFoundError, ValueError):
        return None


def interpreter_enabled() -> bool:
    """Whether ``TRITON_INTERPRET=1`` is set: kernels then run on CPU tensors (slowly)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on tensors of ``device``, or None when they can."""
    if not triton_available():
        return "the triton package is not installed (pip install triton)"
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if interpreter_enabled():
            return None
        return "CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1 before importing performers"
    return f"Triton kernels run on CUDA tensors (or CPU under TRITON_INTERPRET=1), got device {device.type!r}"
