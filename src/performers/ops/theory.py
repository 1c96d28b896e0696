"""Closed forms from the paper's theory, used by tests, the demo and benchmarks.

All functions take ``x``, ``y`` of shape ``(..., D)`` (broadcastable) and return ``(...)``.
References: Choromanski et al., *Rethinking Attention with Performers*, ICLR 2021
(arXiv 2009.14794): Lemma 1, Lemma 2, Theorem 1 and Theorem 2 (arXiv form).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "mse_hyperbolic",
    "mse_positive",
    "mse_trigonometric",
    "orthogonal_mse_bound",
    "regularized_softmax_kernel",
    "softmax_kernel_value",
]


def _sq(t: Tensor) -> Tensor:
    return (t * t).sum(-1)


def softmax_kernel_value(x: Tensor, y: Tensor) -> Tensor:
    """``SM(x, y) = exp(xᵀy)``."""
    return torch.exp((x * y).sum(-1))


def mse_trigonometric(x: Tensor, y: Tensor, m: int) -> Tensor:
    """Lemma 2: ``MSE(SM^trig_m) = e^{‖x+y‖²} SM^{-2} (1 - e^{-‖x-y‖²})² / (2m)`` (iid ``ω``)."""
    sm = softmax_kernel_value(x, y)
    return torch.exp(_sq(x + y)) * sm.pow(-2) * (1 - torch.exp(-_sq(x - y))).pow(2) / (2 * m)


def mse_positive(x: Tensor, y: Tensor, m: int) -> Tensor:
    """Lemma 2: ``MSE(SM⁺_m) = e^{‖x+y‖²} SM² (1 - e^{-‖x+y‖²}) / m`` (iid ``ω``)."""
    sm = softmax_kernel_value(x, y)
    z2 = _sq(x + y)
    return torch.exp(z2) * sm.pow(2) * (1 - torch.exp(-z2)) / m


def mse_hyperbolic(x: Tensor, y: Tensor, m: int) -> Tensor:
    """Lemma 2: ``MSE(SM^{hyp+}_m) = ½ (1 - e^{-‖x+y‖²}) MSE(SM⁺_m)`` (``m`` projections, 2m features)."""
    return 0.5 * (1 - torch.exp(-_sq(x + y))) * mse_positive(x, y, m)


def orthogonal_mse_bound(x: Tensor, y: Tensor, m: int) -> Tensor:
    """Theorem 2 (arXiv form), ``m ≤ d``: ``MSE(SM^{ort+}_m) ≤ MSE(SM⁺_m) - 2(m-1)/(m(d+2)) (SM - Λ)²``.

    ``Λ = exp(-(‖x‖² + ‖y‖²)/2)``.
    """
    d = x.shape[-1]
    lam = torch.exp(-(_sq(x) + _sq(y)) / 2)
    gap = 2 * (m - 1) / (m * (d + 2)) * (softmax_kernel_value(x, y) - lam).pow(2)
    return mse_positive(x, y, m) - gap


def regularized_softmax_kernel(x: Tensor, y: Tensor, terms: int = 200) -> Tensor:
    """``SMREG(x, y) = E[exp(ωᵀx − ‖x‖²/2) exp(ωᵀy − ‖y‖²/2)]`` for ``ω ~ Unif(√d·S^{d−1})``.

    The kernel that positive features with rows of norm exactly ``√d`` estimate without bias:
    ``Λ · Σ_k (w^k / k!) Π_{j<k} d/(d+2j)`` with ``w = ‖x+y‖²/2`` (series of ``E[cosh]`` over
    the sphere; equals the Bessel form of Theorem 1's proof).
    """
    d = x.shape[-1]
    lam = torch.exp(-(_sq(x) + _sq(y)) / 2)
    w = _sq(x + y) / 2
    term = torch.ones_like(w)
    total = torch.ones_like(w)
    for k in range(1, terms):
        term = term * w / k * d / (d + 2 * (k - 1))
        total = total + term
    return lam * total
