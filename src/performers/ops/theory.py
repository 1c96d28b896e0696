"""Closed forms from the paper's theory, used by tests, the demo and benchmarks.

All functions take ``x``, ``y`` of shape ``(..., D)`` (broadcastable) and return ``(...)``.
References: Choromanski et al., *Rethinking Attention with Performers*, ICLR 2021
(arXiv 2009.14794): Lemma 1, Lemma 2, Theorem 1 and Theorem 2 (arXiv form); FAVOR++ (optimal
positive random features) of Likhosherstov et al., *Chefs' Random Tables*, NeurIPS 2022
(arXiv 2205.15317), and the Gaussian-kernel versions of the estimators.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "gaussian_kernel_value",
    "gaussian_mse",
    "gerf_second_moment_ratio",
    "mse_hyperbolic",
    "mse_optimal_positive",
    "mse_positive",
    "mse_trigonometric",
    "optimal_positive_parameter",
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


# FAVOR++: generalized exponential (GERF) and optimal positive random features (OPRF) of
# Likhosherstov, Choromanski, Dubey, Liu, Sarlos, Weller, "Chefs' Random Tables: Non-
# Trigonometric Random Features", NeurIPS 2022 (arXiv 2205.15317). For ω ~ N(0, I_d) and
# A < 1/4, f(ω, x) = D exp(A‖ω‖² + B ωᵀx − ‖x‖²/2) with B = √(1 − 4A), D = (1 − 4A)^{d/4}
# gives E[f(ω, x) f(ω, y)] = exp(xᵀy) (A = 0 is FAVOR+'s Lemma 1).


def optimal_positive_parameter(phi: Tensor | float, d: int) -> Tensor:
    """``A*``, the variance-minimizing GERF parameter for ``‖x+y‖² = φ`` in dimension ``d`` (CRT).

    The negative root of ``16 d A² + (4φ − 2d) A − φ = 0``:
    ``A* = (1 − 2ρ − √((2ρ+1)² + 8ρ)) / 16`` with ``ρ = φ/d``, evaluated in the cancellation-free
    form ``A* = −ρ / (1 − 2ρ + √(4ρ² + 12ρ + 1))`` (multiply by the conjugate), whose denominator is
    computed as ``1 + (12ρ + 1) / (√(4ρ² + 12ρ + 1) + 2ρ)`` (again the conjugate). ``A* ≤ 0``,
    ``A*(0) = 0``, and ``1 − 8A* > 0`` always (finite variance).
    ``phi``: any shape ``(...)`` (or a float) → ``(...)``; differentiable.
    """
    if not isinstance(phi, Tensor):
        phi = torch.tensor(float(phi), dtype=torch.float64)
    rho = phi / d
    root = torch.sqrt(4 * rho * rho + 12 * rho + 1)
    return -rho / (1 + (12 * rho + 1) / (root + 2 * rho))


def gerf_second_moment_ratio(phi: Tensor, a: Tensor | float, d: int) -> Tensor:
    """``E[(f(ω,x)f(ω,y))²] / SM(x,y)² = ((1−4A)²/(1−8A))^{d/2} exp(φ/(1−8A))``, ``φ = ‖x+y‖²``.

    Finite for ``A < 1/8``. ``phi``: ``(...)`` → ``(...)``.
    """
    a = torch.as_tensor(a, dtype=phi.dtype)
    return torch.exp(0.5 * d * (2 * torch.log1p(-4 * a) - torch.log1p(-8 * a)) + phi / (1 - 8 * a))


def mse_optimal_positive(x: Tensor, y: Tensor, m: int, a: Tensor | float | None = None) -> Tensor:
    """MSE (= variance) of the GERF estimator with ``m`` iid features, parameter ``a``.

    ``SM² [((1−4A)²/(1−8A))^{d/2} e^{‖x+y‖²/(1−8A)} − 1] / m``; ``a=None`` uses the pair's own
    optimum ``A*(‖x+y‖²)`` (OPRF). ``a = 0`` gives :func:`mse_positive`.
    """
    d = x.shape[-1]
    phi = _sq(x + y)
    a = optimal_positive_parameter(phi, d) if a is None else a
    sm = softmax_kernel_value(x, y)
    return sm.pow(2) * (gerf_second_moment_ratio(phi, a, d) - 1) / m


def gaussian_kernel_value(x: Tensor, y: Tensor) -> Tensor:
    """``K(x, y) = exp(−‖x − y‖²/2) = SM(x, y) · exp(−‖x‖²/2) · exp(−‖y‖²/2)``."""
    return torch.exp(-0.5 * _sq(x - y))


def gaussian_mse(softmax_mse: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """MSE of a Gaussian-kernel estimator from its softmax version (features times ``e^{−‖x‖²/2}``).

    The Gaussian features are the softmax features times the deterministic ``exp(−‖x‖²/2)``,
    so the MSE scales by ``exp(−‖x‖² − ‖y‖²)``.
    """
    return softmax_mse * torch.exp(-_sq(x) - _sq(y))
