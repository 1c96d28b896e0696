"""Rotary position embedding (RoPE) applied to per-head queries and keys.

Rotating ``q`` and ``k`` by position-dependent angles makes ``qᵀk`` depend on the relative
position only. It acts before the FAVOR+ feature map (the estimator then approximates
``exp(q̃ᵀk̃/√D)`` of the rotated vectors), so it works unchanged with linear attention, and it
has no position limit and no parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["RotaryEmbedding", "apply_rotary"]


def _rotate_half(x: Tensor) -> Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs ``(x_i, x_{i+D/2})`` of ``x`` ``(B, H, L, D)`` by angles ``cos, sin`` ``(B, 1, L, D)``."""
    return x * cos + _rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """Rotary embedding for heads of even size ``head_dim``: frequencies ``base^(-2i/D)``.

    Holds no parameters or buffers (angles are recomputed from the positions), so a model's
    ``state_dict`` does not depend on whether rotary positions are used.
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary position embedding needs an even head dimension, got {head_dim}")
        if not base > 1:
            raise ValueError(f"rotary base must be > 1, got {base!r}")
        self.head_dim = head_dim
        self.base = float(base)

    def angles(self, position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``cos, sin`` of shape ``(B, 1, L, D)`` for integer ``position_ids`` ``(B, L)``.

        Angles are formed in float64 (``position · frequency`` loses digits in float32 at long
        positions) and rounded to ``dtype`` (at least float32) only after ``cos``/``sin``.
        """
        half = self.head_dim // 2
        exponents = torch.arange(half, device=position_ids.device, dtype=torch.float64) / half
        inv_freq = self.base**-exponents
        theta = position_ids.to(torch.float64)[..., None] * inv_freq  # (B, L, D/2)
        theta = torch.cat([theta, theta], dim=-1).unsqueeze(1)  # (B, 1, L, D)
        out_dtype = torch.promote_types(dtype, torch.float32)
        return theta.cos().to(out_dtype), theta.sin().to(out_dtype)

    def forward(
        self, q: Tensor, k: Tensor, q_positions: Tensor, k_positions: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Rotate ``q`` ``(B, H, Lq, D)`` and ``k`` ``(B, H, Lk, D)`` by their positions ``(B, L)``."""
        cos, sin = self.angles(q_positions, q.dtype)
        q_rot = apply_rotary(q, cos, sin).to(q.dtype)
        if k_positions is not None and k_positions is not q_positions:
            cos, sin = self.angles(k_positions, k.dtype)
        k_rot = apply_rotary(k, cos, sin).to(k.dtype)
        return q_rot, k_rot

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"
