"""Host-side helpers of the Triton kernels: dtypes, block sizes, flattened views."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from performers.ops.triton import interpreter_enabled

__all__ = ["ACTIVATIONS", "Blocks", "activation_code", "compute_types", "flat", "pow2"]

# Feature maps the kernels compute (codes of ``tiles.feature_tile``): the exponential form, and
# the generalized kernels f(x Pᵀ) + eps of the registry by name (f(x) + eps without projection).
ACTIVATIONS = {"exp": 0, "relu": 1, "elu": 2, "abs": 3, "plain-exp": 4}


def pow2(n: int, floor: int = 16) -> int:
    """The next power of two ``>= n`` and ``>= floor`` (``tl.dot`` needs tiles of 16 or more)."""
    return max(floor, triton.next_power_of_2(max(1, n)))


def compute_types(dtype: torch.dtype) -> dict:
    """``ACC`` (accumulation), ``LOW`` (products in ``IN`` = the input dtype) for an input dtype."""
    if dtype == torch.float64:
        return {"ACC": tl.float64, "LOW": False, "IN": tl.float64}
    if dtype == torch.float16:
        return {"ACC": tl.float32, "LOW": True, "IN": tl.float16}
    if dtype == torch.bfloat16:
        # The interpreter has no bfloat16 arithmetic (numpy stores it as raw 16-bit words): its
        # products of bfloat16 tiles run in float32; compiled kernels multiply in bfloat16.
        return {"ACC": tl.float32, "LOW": not interpreter_enabled(), "IN": tl.bfloat16}
    return {"ACC": tl.float32, "LOW": False, "IN": tl.float32}


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
    def for_dims(cls, dim: int, value_dim: int) -> Blocks:
        """The default tiles for head dimensions ``dim``/``value_dim``: 64 positions × 64 features
        up to 64, 32 × 32 above. The shared memory each kernel needs (``compile_check`` reports
        it, bfloat16, sm_90) peaks in the causal backward kernels: 144 KiB at D = 64 with 64×64
        tiles, 137 KiB at D = 128 with 32×32 — within an A100's 164 KiB and an H100's 227 KiB,
        where D = 128 with 64×64 tiles needs 280 KiB."""
        return cls(64, 64) if max(dim, value_dim) <= 64 else cls(32, 32, span=2048)


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
