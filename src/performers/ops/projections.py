"""Random projection matrices ``W`` of shape ``(M, D)`` for random-feature attention.

Every builder draws through an explicit :class:`torch.Generator`, so the same generator
state always gives the same matrix. Sampling happens on the generator's device in float64
(QR is done there too) and the result is then moved to ``device``/``dtype``: a given seed
yields the same matrix on every device and in every dtype, up to the final rounding.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from performers.utils.validation import is_int

RowNorms = Literal["chi", "sqrt_d"]
ProjectionKind = Literal["orthogonal", "iid"]

__all__ = [
    "ProjectionKind",
    "RowNorms",
    "gaussian_projection",
    "make_projection",
    "orthogonal_projection",
]


def _check_sizes(num_features: int, dim: int) -> None:
    for name, value in (("num_features", num_features), ("dim", dim)):
        if not is_int(value):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _sampling_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def gaussian_projection(
    num_features: int,
    dim: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """iid Gaussian projection: ``(M, D)`` with entries ``N(0, 1)``, rows ``ω_i ~ N(0, I_D)``."""
    _check_sizes(num_features, dim)
    w = torch.randn(
        num_features, dim, generator=generator, device=_sampling_device(generator), dtype=torch.float64
    )
    return w.to(device=device, dtype=dtype or torch.get_default_dtype())


def _haar_orthogonal_blocks(num_blocks: int, dim: int, generator: torch.Generator | None) -> Tensor:
    """``(num_blocks, D, D)`` independent Haar-distributed orthogonal matrices.

    ``Q`` from a plain QR of a Gaussian matrix is *not* Haar: LAPACK's Householder QR makes
    the diagonal of ``R`` have a fixed sign pattern, which leaves ``Q`` correlated with its
    own signs (e.g. ``Q[0, 0] <= 0`` in every draw). Multiplying the columns of ``Q`` by
    ``sign(diag R)`` gives the unique decomposition with ``diag R > 0``, whose ``Q`` is Haar
    (Mezzadri, 2007). Without the fix the positive estimator ``exp(ωᵀx)`` is biased.
    """
    gaussian = torch.randn(
        num_blocks, dim, dim, generator=generator, device=_sampling_device(generator), dtype=torch.float64
    )
    q, r = torch.linalg.qr(gaussian)
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return q * signs.unsqueeze(-2)


def orthogonal_projection(
    num_features: int,
    dim: int,
    *,
    row_norms: RowNorms = "chi",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Block-orthogonal projection ``(M, D)``: the rows of each ``D×D`` block are orthogonal.

    ``ceil(M / D)`` independent Haar orthogonal blocks are stacked and the first ``M`` rows
    kept (the last block may be partial). Each row direction is uniform on the sphere.

    Args:
        num_features: ``M``, the number of rows (random features).
        dim: ``D``, the head dimension.
        row_norms: ``"chi"`` gives each row the norm of an independent ``N(0, I_D)`` vector
            (χ_D distributed), so every row is marginally ``N(0, I_D)`` and FAVOR+ stays an
            unbiased estimator of the softmax kernel. ``"sqrt_d"`` gives every row norm exactly
            ``√D`` (the paper's "regularized" SMREG variant, unbiased for its own kernel).
        generator: source of randomness.
        device, dtype: where and how the result is returned.

    Returns:
        ``(M, D)`` tensor.
    """
    _check_sizes(num_features, dim)
    if row_norms not in ("chi", "sqrt_d"):
        raise ValueError(f"row_norms must be 'chi' or 'sqrt_d', got {row_norms!r}")
    num_blocks = -(-num_features // dim)
    blocks = _haar_orthogonal_blocks(num_blocks, dim, generator)
    # Rows of Qᵀ are the columns of Q: orthonormal within a block.
    directions = blocks.transpose(-2, -1).reshape(num_blocks * dim, dim)[:num_features]
    if row_norms == "chi":
        norms = torch.randn(
            num_features, dim, generator=generator, device=directions.device, dtype=torch.float64
        ).norm(dim=-1)
    else:
        norms = torch.full((num_features,), float(dim) ** 0.5, dtype=torch.float64, device=directions.device)
    w = directions * norms.unsqueeze(-1)
    return w.to(device=device, dtype=dtype or torch.get_default_dtype())


def make_projection(
    num_features: int,
    dim: int,
    *,
    kind: ProjectionKind = "orthogonal",
    row_norms: RowNorms = "chi",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Build a ``(M, D)`` projection of the given ``kind`` (``"orthogonal"`` or ``"iid"``)."""
    if kind == "orthogonal":
        return orthogonal_projection(
            num_features, dim, row_norms=row_norms, generator=generator, device=device, dtype=dtype
        )
    if kind == "iid":
        if row_norms != "chi":
            raise ValueError("row_norms='sqrt_d' is only defined for kind='orthogonal'")
        return gaussian_projection(num_features, dim, generator=generator, device=device, dtype=dtype)
    raise ValueError(f"kind must be 'orthogonal' or 'iid', got {kind!r}")
