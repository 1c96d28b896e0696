"""Host-side helpers of the Triton kernels: dtypes, block sizes, flattened views."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from performers.ops.triton import interpreter_enabled

__all__ = ["ACTIVATIONS", "Blocks", "activation_code", "compute_types", "flat", "pow2", "tf32_matmuls"]

# Feature maps the kernels compute (codes of ``tiles.feature_tile``): the exponential form, and
# the generalized kernels f(x Pᵀ) + eps of the registry by name (f(x) + eps without projection).
ACTIVATIONS = {"exp": 0, "relu": 1, "elu": 2, "abs": 3, "plain-exp": 4}


def pow2(n: int, floor: int = 16) -> int:
    """The next power of two ``>= n`` and ``>= floor`` (``tl.dot`` needs tiles of 16 or more)."""
    return max(floor, triton.next_power_of_2(max(1, n)))


def tf32_matmuls() -> bool:
    """Whether PyTorch's float32 CUDA matmuls may use TF32: the precision API of torch >= 2.9
    (``torch.backends.cuda.matmul.fp32_precision``, or ``torch.backends.fp32_precision`` which
    it inherits), else the legacy flag (``allow_tf32``, ``set_float32_matmul_precision``).
    Reading the legacy flag after the new API was used raises in torch, so it is read last."""
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)
    if precision is None:  # torch < 2.9
        return bool(matmul.allow_tf32)
    if precision == "none":
        precision = getattr(torch.backends, "fp32_precision", "none")
    if precision in ("tf32", "ieee"):
        return precision == "tf32"
    try:
        return bool(matmul.allow_tf32)
    except RuntimeError:  # the two APIs mixed: torch itself refuses to say
        return False


def compute_types(dtype: torch.dtype, tf32: bool | None = None) -> dict:
    """``ACC`` (accumulation), ``LOW`` (products in ``IN`` = the input dtype) for an input dtype;
    ``tf32``: float32 products in TF32 (default: as PyTorch's float32 matmuls,
    :func:`tf32_matmuls`)."""
    if dtype == torch.float64:
        return {"ACC": tl.float64, "LOW": False, "IN": tl.float64}
    if dtype == torch.float16:
        return {"ACC": tl.float32, "LOW": True, "IN": tl.float16}
    if dtype == torch.bfloat16:
        # The interpreter has no bfloat16 arithmetic (numpy stores it as raw 16-bit words): its
        # products of bfloat16 tiles run in float32; compiled kernels multiply in bfloat16.
        return {"ACC": tl.float32, "LOW": not interpreter_enabled(), "IN": tl.bfloat16}
    # float32: IEEE products, or TF32 where PyTorch's own float32 matmuls may use it.
    tf32 = tf32_matmuls() if tf32 is None else tf32
    return {"ACC": tl.float32, "LOW": bool(tf32), "IN": tl.float32}


class Blocks:
    """Tile sizes: positions per tile ``rows``, features per tile ``features`` (powers of two)."""

    def __init__(self, rows: int = 64, features: int = 64, span: int = 4096) -> None:
        self.rows, self.features = pow2(rows), pow2(features)
        # Positions per program of the reductions over the sequence (the key summary and the
        # projection's gradient): they run on (feature tiles × batch·heads × L/span) programs
        # whose partial sums the host adds, so that long sequences fill the GPU.
        self.span = max(self.rows, span // self.rows * self.rows)

    def splits(self, length: int) -> int:
        """Programs along the sequence for a reduction over ``length`` positions."""
        return max(1, triton.cdiv(length, self.span))

    @classmethod
    def for_dims(cls, dim: int, value_dim: int, dtype: torch.dtype = torch.bfloat16) -> Blocks:
        """The default tiles for head dimensions ``dim``/``value_dim`` and inputs of ``dtype``.

        Shared memory per program grows with the element size, the positions per tile and the
        head dimension (tiles span all of it); it peaks in the causal backward kernels. The
        tiles: 64 × 64 (positions × features) for 2-byte inputs up to D = 64, halved per doubling
        of the element size or of D above 64, at least 16 (features at least 32 up to 4 bytes).
        What they need is measured with ``compile_check`` and kept in
        :data:`performers.ops.triton.paths.SHARED_KIB` (e.g. 147 KiB for bfloat16 at D = 64;
        float32 at D = 64 with 64-position tiles would need 241–280 KiB, more than any GPU has).
        """
        size = dtype.itemsize
        width = max(dim, value_dim)
        rows = max(16, 64 // max(1, size // 2) // max(1, pow2(width) // 64))
        features = max(rows, 32 if size <= 4 else 16)
        return cls(rows, features, span=4096 if width <= 64 else 2048)


def flat(t: Tensor) -> Tensor:
    """``(B, H, L, X)`` → contiguous ``(B·H, L, X)``."""
    return t.reshape(-1, *t.shape[2:]).contiguous()


def activation_code(activation: str) -> int:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    return ACTIVATIONS[activation]


def kernel_eps(eps: float | None, dtype: torch.dtype) -> float:
    """The denominator guard as a kernel argument: float scalars reach kernels as float32, where
    float64's smallest normal number would flush to 0 (and the guard would never fire), so the
    guard is at least float32's."""
    eps = torch.finfo(dtype).tiny if eps is None else eps
    return max(float(eps), torch.finfo(torch.float32).tiny)
