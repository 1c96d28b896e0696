r"""Random-feature maps ``φ`` with ``φ(x)ᵀφ(y) ≈ K(x, y)``, and their numerical stabilization.

Shapes: ``x`` is ``(..., L, D)``, a projection ``W`` is ``(M, D)``; a map returns features
``(..., L, M')`` where ``M' = M`` or ``2M`` (hyperbolic and trigonometric maps use two
features per projection row), or ``M' = D`` for a generalized map without projection.

Every map has the signature ``fn(x, projection) -> FeatureMapOutput`` and works on ``x`` as
given: ``φ(x)ᵀφ(y)`` estimates ``exp(xᵀy)``. Attention feeds ``x·√scale`` (``scale = 1/√D``
by default, i.e. ``x·D^{-1/4}``) so that the estimate is ``exp(qᵀk/√D)``.

A map returns ``φ`` factored as ``linear · exp(log)`` so that attention can move large
magnitudes out of the exponent before ``exp`` is taken (see :func:`stabilize_queries` and
:func:`stabilize_keys`). :meth:`FeatureMapOutput.materialize` gives the plain ``φ(x)``.

Stabilization, and why it is exact
----------------------------------
Normalized attention ``out_i = Σ_j φ(q_i)ᵀφ(k_j) v_j / Σ_j φ(q_i)ᵀφ(k_j)`` is unchanged when

* ``φ(q_i)`` is multiplied by any ``a_i > 0`` (it factors out of numerator and denominator
  of row ``i``), and
* every ``φ(k_j)`` that row ``i`` sums over is multiplied by one common ``b_i > 0`` (again
  a factor of row ``i``'s numerator and denominator).

Queries use ``a_i = exp(-max_f log φ_f(q_i))``, so each query row has maximum 1. Keys use
``b_i = exp(-m_i)`` where, bidirectionally, ``m_i = m`` is the maximum of ``log φ(k_j)`` over
all (non-padded) keys and features, and causally ``m_i = max_{j ≤ i, f} log φ_f(k_j)`` is the
*running* maximum up to position ``i``: it never looks at a future position, so a decoder that
sees one token at a time computes exactly the same offsets as the parallel pass. In the causal
algorithm key ``j`` is stored as ``exp(log φ(k_j) - m_j)`` (≤ 1) and rescaled by
``exp(m_j - m_i) ≤ 1`` when query ``i ≥ j`` reads it, so every term row ``i`` sums carries the
same factor ``exp(-m_i)``, which cancels exactly. A factor that differed between the keys of
one row (a per-key maximum) would *not* cancel; that is why keys do not use one.

No ``eps`` is added inside the exponential features (FAVOR+'s ``exp`` is already positive);
adding one after stabilization would make the result depend on the stabilizer. Offsets are
computed on detached values: the output does not depend on them, so neither does its gradient.

FAVOR++ (optimal positive random features)
------------------------------------------
``"favor++"`` is the generalized exponential estimator of Likhosherstov et al., *Chefs' Random
Tables* (NeurIPS 2022, arXiv 2205.15317): ``φ_i(x) = D exp(A‖ω_i‖² + B ω_iᵀx − ‖x‖²/2)/√M``
with ``B = √(1−4A)``, ``D = (1−4A)^{d/4}``, unbiased for ``exp(xᵀy)`` for every ``A < 1/4``
(``A = 0`` is FAVOR+). Its variance is smallest at ``A*(‖x+y‖²)``
(:func:`performers.ops.theory.optimal_positive_parameter`); attention needs one ``A`` shared by
every query and key of a (batch, head), and takes ``A*(φ̄)`` with ``φ̄`` the mean of
``‖q̃_i + k̃_j‖²`` over all pairs, computed in ``O(L·d)`` by the pair-mean identity
(:func:`pair_mean_sq_norm`; the log second moment is affine in ``‖x+y‖²``, so ``A*(φ̄)``
minimizes its pair average). ``A`` is a function of the inputs, not of ``W``, so for fixed
inputs the estimate stays unbiased; gradients flow through ``A`` (the derivative of what is
computed; the extra term has mean zero since ``E_W[φ(q)ᵀφ(k)]`` does not depend on ``A``).

*Causal FAVOR++.* A causal state ``Σ_j φ(k_j)v_jᵀ`` can only be read by a query whose features
use the same ``A`` as every key in it (``A`` and ``B`` enter each feature non-linearly, and a
query-side parameter cannot compensate: unbiasedness with a fixed key side pins
``A_q + A_k``), so a statistic that changes along the sequence — per chunk or running — would
need the past keys re-featurized (quadratic time) or one state per value of ``A``. We therefore
fix one ``A`` per (batch, head) for the whole causal sequence, computed from the first
non-padded position ``p`` alone: ``A = A*(‖q̃_p + k̃_p‖²)``, the pair mean over the only pair
visible at ``p``. Every query ``i ≥ p`` may read position ``p``, so no output depends on a later
token (queries before ``p`` see no key at all), the estimator is unbiased for every query (``A``
does not depend on ``W``), and the recurrent decoder computes the same ``A`` from its first token
and carries it in :class:`~performers.ops.causal.FavorState` (``kernel_params``); a continued
sequence (``initial_state``) keeps the ``A`` of its state. A row whose keys so far are all
padding has no ``A`` yet (NaN in the state); its first real key fixes it.

*Float range.* ``A‖ω_f‖²`` spreads FAVOR++'s features by hundreds of nats when ``A`` is very
negative (sharp attention). Bidirectional attention moves each feature's largest key log to
the query side (exact), so every row's largest term is 1 and float32 does not underflow rows.
Causal attention cannot (that maximum reads the future): at mean ``|qᵀk|/√d ≳ 30`` causal
FAVOR++ in float32 may return zero rows; use float64 or FAVOR+ there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from performers.ops.theory import optimal_positive_parameter

__all__ = [
    "KERNELS",
    "FeatureMapOutput",
    "Kernel",
    "favor_plus_plus_parameters",
    "feature_map",
    "gaussian_hyperbolic_features",
    "gaussian_positive_features",
    "gaussian_trigonometric_features",
    "generalized_features",
    "get_kernel",
    "hyperbolic_softmax_features",
    "key_offsets",
    "optimal_positive_features",
    "pair_mean_sq_norm",
    "positive_softmax_features",
    "register_kernel",
    "stabilize_keys",
    "stabilize_queries",
    "trigonometric_softmax_features",
]


class FeatureMapOutput(NamedTuple):
    """Features factored as ``φ = linear · exp(log)``; ``None`` stands for 1 (resp. 0 in log).

    ``log`` is ``(..., L, M')`` or ``(..., L, 1)`` (a per-token magnitude); ``linear`` is
    ``(..., L, M')``.
    """

    log: Tensor | None
    linear: Tensor | None

    def materialize(self) -> Tensor:
        """The plain, unstabilized features ``φ(x)`` of shape ``(..., L, M')``."""
        if self.log is None:
            assert self.linear is not None
            return self.linear
        magnitude = torch.exp(self.log)
        return magnitude if self.linear is None else self.linear * magnitude


def _project(x: Tensor, projection: Tensor) -> Tensor:
    return torch.matmul(x, projection.transpose(-2, -1))


def _half_sq_norm(x: Tensor) -> Tensor:
    return 0.5 * (x * x).sum(dim=-1, keepdim=True)


def positive_softmax_features(x: Tensor, projection: Tensor | None) -> FeatureMapOutput:
    """FAVOR+ positive features ``φ(x) = exp(Wx - ‖x‖²/2) / √M`` (Lemma 1, ``SM⁺``).

    ``x``: ``(..., L, D)``, ``projection``: ``(M, D)`` → features ``(..., L, M)``.
    """
    assert projection is not None
    log = _project(x, projection) - _half_sq_norm(x) - 0.5 * math.log(projection.shape[-2])
    return FeatureMapOutput(log=log, linear=None)


def hyperbolic_softmax_features(x: Tensor, projection: Tensor | None) -> FeatureMapOutput:
    """Antithetic features ``[exp(Wx), exp(-Wx)] · exp(-‖x‖²/2) / √(2M)`` (``SM^{hyp+}``).

    ``x``: ``(..., L, D)``, ``projection``: ``(M, D)`` → features ``(..., L, 2M)``.
    """
    assert projection is not None
    u = _project(x, projection)
    log = torch.cat([u, -u], dim=-1) - _half_sq_norm(x) - 0.5 * math.log(2 * projection.shape[-2])
    return FeatureMapOutput(log=log, linear=None)


def trigonometric_softmax_features(x: Tensor, projection: Tensor | None) -> FeatureMapOutput:
    """Random Fourier features ``[cos Wx, sin Wx] · exp(‖x‖²/2) / √M`` (``SM^{trig}``).

    Unbiased but not positive. ``x``: ``(..., L, D)``, ``projection``: ``(M, D)`` →
    features ``(..., L, 2M)``.
    """
    assert projection is not None
    u = _project(x, projection)
    linear = torch.cat([torch.cos(u), torch.sin(u)], dim=-1)
    return FeatureMapOutput(log=_half_sq_norm(x) - 0.5 * math.log(projection.shape[-2]), linear=linear)


def generalized_features(
    x: Tensor, projection: Tensor | None, *, f: Callable[[Tensor], Tensor], eps: float = 1e-3
) -> FeatureMapOutput:
    """Generalized kernel features ``f(Wx) + eps``, or ``f(x) + eps`` when ``projection`` is None.

    ``x``: ``(..., L, D)``, ``projection``: ``(M, D)`` or None → ``(..., L, M)`` or ``(..., L, D)``.
    """
    u = x if projection is None else _project(x, projection)
    return FeatureMapOutput(log=None, linear=f(u) + eps)


def gaussian_positive_features(x: Tensor, projection: Tensor | None) -> FeatureMapOutput:
    """Positive features of the Gaussian kernel ``exp(−‖x−y‖²/2)``: ``exp(Wx − ‖x‖²) / √M``.

    The softmax map times ``exp(−‖x‖²/2)`` (``K = SM(x,y) e^{−‖x‖²/2} e^{−‖y‖²/2}``).
    ``x``: ``(..., L, D)``, ``projection``: ``(M, D)`` → ``(..., L, M)``.
    """
    assert projection is not None
    log = _project(x, projection) - 2 * _half_sq_norm(x) - 0.5 * math.log(projection.shape[-2])
    return FeatureMapOutput(log=log, linear=None)


def gaussian_hyperbolic_features(x: Tensor, projection: Tensor | None) -> FeatureMapOutput:
    """Antithetic Gaussian-kernel features ``[exp(Wx), exp(−Wx)] · exp(−‖x‖²) / √(2M)``.

    ``x``: ``(..., L, D)``, ``projection``: ``(M, D)`` → ``(..., L, 2M)``.
    """
    assert projection is not None
    u = _project(x, projection)
    log = torch.cat([u, -u], dim=-1) - 2 * _half_sq_norm(x) - 0.5 * math.log(2 * projection.shape[-2])
    return FeatureMapOutput(log=log, linear=None)


def gaussian_trigonometric_features(x: Tensor, projection: Tensor | None) -> FeatureMapOutput:
    """Random Fourier features of the Gaussian kernel, ``[cos Wx, sin Wx] / √M`` (Rahimi–Recht).

    ``x``: ``(..., L, D)``, ``projection``: ``(M, D)`` → ``(..., L, 2M)``.
    """
    assert projection is not None
    u = _project(x, projection)
    linear = torch.cat([torch.cos(u), torch.sin(u)], dim=-1) * projection.shape[-2] ** -0.5
    return FeatureMapOutput(log=None, linear=linear)


def _masked_mean(t: Tensor, keep: Tensor | None) -> Tensor:
    # t: (..., L, E), keep: (..., L) bool (broadcastable) → (..., E)
    if keep is None:
        return t.mean(dim=-2)
    weight = keep.to(t.dtype).unsqueeze(-1)
    return (t * weight).sum(dim=-2) / weight.sum(dim=-2).clamp_min(1.0)


def pair_mean_sq_norm(
    x: Tensor, y: Tensor, x_keep: Tensor | None = None, y_keep: Tensor | None = None
) -> Tensor:
    """``φ̄ = mean_{i,j} ‖x_i + y_j‖²`` over all pairs in ``O((Lx + Ly)·D)`` (pair-mean identity).

    ``mean_{i,j} ‖x_i + y_j‖² = mean_i ‖x_i‖² + mean_j ‖y_j‖² + 2 (mean_i x_i)ᵀ(mean_j y_j)``
    (Chefs' Random Tables' homogeneity heuristic, Likhosherstov et al. 2022).

    Args:
        x: ``(..., Lx, D)``; y: ``(..., Ly, D)``.
        x_keep, y_keep: optional ``(..., L)`` bool (broadcastable), True = the position counts.

    Returns:
        ``(...)``.
    """
    sq = _masked_mean((x * x).sum(-1, keepdim=True), x_keep)[..., 0]
    sq = sq + _masked_mean((y * y).sum(-1, keepdim=True), y_keep)[..., 0]
    return sq + 2 * (_masked_mean(x, x_keep) * _masked_mean(y, y_keep)).sum(-1)


def favor_plus_plus_parameters(
    q: Tensor, k: Tensor, *, causal: bool = False, key_padding_mask: Tensor | None = None
) -> Tensor:
    """The FAVOR++ parameter ``A`` of each (batch, head), from scaled queries and keys.

    Bidirectional: ``A*(φ̄)`` with ``φ̄`` the pair mean of ``‖q_i + k_j‖²`` over non-padded keys
    (and, in self-attention ``Lq == Lk``, non-padded queries). Causal: ``A*(‖q_p + k_p‖²)`` at
    the first non-padded position ``p`` (see the module docstring for why one ``A`` per sequence).

    Args:
        q: ``(B, H, Lq, D)`` and k: ``(B, H, Lk, D)``, already multiplied by ``√scale``.
        causal: use the causal statistic.
        key_padding_mask: ``(B, Lk)`` bool, True = padded.

    Returns:
        ``A`` of shape ``(B, H)``, ``≤ 0``; causal rows whose keys are all padded get NaN (no
        real key yet: the first real key of a continuation fixes ``A``).
    """
    d = q.shape[-1]
    if causal:
        if key_padding_mask is None:
            first_q, first_k = q[:, :, 0], k[:, :, 0]
        else:
            first = (~key_padding_mask).long().argmax(dim=1)  # (B,); 0 if every key is padded
            index = first[:, None, None, None].expand(q.shape[0], q.shape[1], 1, d)
            first_q, first_k = q.gather(2, index)[:, :, 0], k.gather(2, index)[:, :, 0]
            phi = ((first_q + first_k) ** 2).sum(-1)
            # A row with no real key yet has no A: NaN, fixed later by its first real key
            # (attention carries it in the causal state and fills it on continuation).
            open_rows = key_padding_mask.all(dim=1)[:, None].expand_as(phi)
            return optimal_positive_parameter(phi, d).masked_fill(open_rows, float("nan"))
        phi = ((first_q + first_k) ** 2).sum(-1)
    else:
        key_keep = None if key_padding_mask is None else ~key_padding_mask[:, None, :]
        query_keep = key_keep if q.shape[2] == k.shape[2] else None
        phi = pair_mean_sq_norm(q, k, query_keep, key_keep)
    return optimal_positive_parameter(phi, d)


def optimal_positive_features(
    x: Tensor, projection: Tensor | None, a: Tensor | float, *, gaussian: bool = False
) -> FeatureMapOutput:
    """Generalized exponential (GERF) positive features; FAVOR++ at ``a = A*``.

    ``φ_i(x) = D exp(A‖ω_i‖² + B ω_iᵀx + C‖x‖²) / √M`` with ``B = √(1−4A)``,
    ``D = (1−4A)^{d/4}`` and ``C = −1/2`` (softmax kernel ``exp(xᵀy)``) or ``C = −1``
    (``gaussian``: ``exp(−‖x−y‖²/2)``) — Likhosherstov et al., *Chefs' Random Tables*, 2022.
    Unbiased for ``ω_i ~ N(0, I)`` (iid or sign-fixed orthogonal with χ norms) and any
    ``A < 1/4``; finite variance needs ``A < 1/8``.

    Args:
        x: ``(..., L, D)``.
        projection: ``(M, D)`` (or a batch ``(..., M, D)`` broadcasting with ``x``).
        a: ``A``, a float or a tensor broadcasting with ``x.shape[:-2]`` (e.g. ``(B, H)``), ``< 1/4``.
        gaussian: estimate the Gaussian kernel instead of the softmax kernel.

    Returns:
        features ``(..., L, M)`` as ``exp(log)``.
    """
    if projection is None:
        raise ValueError("optimal positive (FAVOR++) features need a projection of shape (M, D)")
    a = torch.as_tensor(a, dtype=x.dtype, device=x.device)
    if not bool(torch.all(a < 0.25)):
        raise ValueError(f"the GERF parameter A must be < 1/4 (B = sqrt(1 - 4A) real), got {a.max().item()}")
    return _gerf_features(x, projection, a, gaussian=gaussian)


def _gerf_features(x: Tensor, projection: Tensor, a: Tensor, *, gaussian: bool) -> FeatureMapOutput:
    # optimal_positive_features without the input checks: attention's A comes from
    # optimal_positive_parameter (≤ 0 by construction), and checking it would sync the host.
    a = a[..., None, None]  # broadcast over (L, M)
    d, m = x.shape[-1], projection.shape[-2]
    one_minus_4a = 1 - 4 * a
    log = torch.sqrt(one_minus_4a) * _project(x, projection)
    # ‖ω_i‖²: (..., 1, M), also for a batch of projections (..., M, D).
    log = log + a * (projection * projection).sum(-1).unsqueeze(-2) + 0.25 * d * torch.log(one_minus_4a)
    norm = _half_sq_norm(x)
    log = log - (2 * norm if gaussian else norm) - 0.5 * math.log(m)
    return FeatureMapOutput(log=log, linear=None)


FeatureFn = Callable[..., FeatureMapOutput]


@dataclass(frozen=True)
class Kernel:
    """One entry of the estimator registry.

    Attributes:
        name: registry name used by modules, configs, the CLI and benchmarks.
        fn: ``fn(x, projection) -> FeatureMapOutput``.
        requires_projection: the map needs a ``(M, D)`` projection (otherwise it is optional).
        nonnegative: every feature is ``>= 0`` (so the attention denominator is positive).
        features_per_row: ``M'/M`` (2 for the hyperbolic and trigonometric maps).
        exp_rows: for maps of the form ``φ(x) = exp(Px - ‖x‖²/2 - c)``, a function
            ``W -> (P, c)``; attention then uses the fused :func:`stabilized_exp_features`.
        parameters: for maps with data-dependent parameters (FAVOR++), a function
            ``parameters(q, k, *, causal, key_padding_mask) -> (B, H)`` of the scaled queries
            and keys ``(B, H, L, D)``; the map is then called as ``fn(x, projection, params)``
            and attention computes the parameters once per call, before the feature maps.
    """

    name: str
    fn: FeatureFn
    requires_projection: bool
    nonnegative: bool
    features_per_row: int = 1
    exp_rows: Callable[[Tensor], tuple[Tensor, float]] | None = None
    parameters: Callable[..., Tensor] | None = None

    def __call__(
        self, x: Tensor, projection: Tensor | None, params: Tensor | None = None
    ) -> FeatureMapOutput:
        if self.parameters is None:
            return self.fn(x, projection)
        if params is None:
            raise ValueError(
                f"kernel {self.name!r} has data-dependent parameters: pass params, e.g. "
                f"KERNELS[{self.name!r}].parameters(q, k) of shape (B, H) (one value shared by "
                "the queries and keys whose kernel is estimated)"
            )
        return self.fn(x, projection, params)

    def num_features(self, projection: Tensor | None, dim: int) -> int:
        """Feature dimension ``M'`` produced for a given projection (or none) and input ``D``."""
        if projection is None:
            return dim
        return self.features_per_row * projection.shape[-2]


def _elu_plus_one(u: Tensor) -> Tensor:
    return F.elu(u) + 1.0


KERNELS: dict[str, Kernel] = {}


def register_kernel(kernel: Kernel, *, overwrite: bool = False) -> Kernel:
    """Add ``kernel`` to the registry under ``kernel.name`` and return it."""
    if kernel.name in KERNELS and not overwrite:
        raise ValueError(f"a kernel named {kernel.name!r} is already registered")
    KERNELS[kernel.name] = kernel
    return kernel


def _positive_rows(w: Tensor) -> tuple[Tensor, float]:
    return w, 0.5 * math.log(w.shape[-2])


def _hyperbolic_rows(w: Tensor) -> tuple[Tensor, float]:
    # [exp(Wx), exp(-Wx)] is the positive map of the stacked projection [W; -W].
    return torch.cat([w, -w], dim=-2), 0.5 * math.log(2 * w.shape[-2])


def _favor_plus_plus(x: Tensor, w: Tensor | None, a: Tensor) -> FeatureMapOutput:
    if w is None:
        return optimal_positive_features(x, w, a)  # raises the missing-projection error
    return _gerf_features(x, w, a, gaussian=False)


def _gaussian_favor_plus_plus(x: Tensor, w: Tensor | None, a: Tensor) -> FeatureMapOutput:
    if w is None:
        return optimal_positive_features(x, w, a, gaussian=True)
    return _gerf_features(x, w, a, gaussian=True)


for _kernel in (
    Kernel("softmax", positive_softmax_features, True, True, 1, _positive_rows),
    Kernel("softmax-hyperbolic", hyperbolic_softmax_features, True, True, 2, _hyperbolic_rows),
    Kernel("trig", trigonometric_softmax_features, True, False, 2),
    Kernel("favor++", _favor_plus_plus, True, True, parameters=favor_plus_plus_parameters),
    Kernel("gaussian", gaussian_positive_features, True, True),
    Kernel("gaussian-hyperbolic", gaussian_hyperbolic_features, True, True, 2),
    Kernel("gaussian-trig", gaussian_trigonometric_features, True, False, 2),
    Kernel("gaussian-favor++", _gaussian_favor_plus_plus, True, True, parameters=favor_plus_plus_parameters),
    Kernel("relu", lambda x, w: generalized_features(x, w, f=F.relu), False, True),
    Kernel("elu", lambda x, w: generalized_features(x, w, f=_elu_plus_one), False, True),
    Kernel("abs", lambda x, w: generalized_features(x, w, f=torch.abs), False, True),
    Kernel("exp", lambda x, w: generalized_features(x, w, f=torch.exp), False, True),
):
    register_kernel(_kernel)


def get_kernel(kernel: str | Kernel | Callable[[Tensor], Tensor]) -> Kernel:
    """Resolve a registry name, a :class:`Kernel`, or a plain callable ``f``.

    A plain callable becomes the generalized kernel ``f(Wx) + 1e-3`` (or ``f(x) + 1e-3``
    without projection); it is treated as possibly signed.
    """
    if isinstance(kernel, Kernel):
        return kernel
    if isinstance(kernel, str):
        try:
            return KERNELS[kernel]
        except KeyError:
            known = ", ".join(repr(k) for k in KERNELS)
            raise ValueError(f"kernel: unknown name {kernel!r}; known kernels are {known}") from None
    if callable(kernel):
        name = getattr(kernel, "__name__", type(kernel).__name__)

        def fn(x: Tensor, w: Tensor | None) -> FeatureMapOutput:
            return generalized_features(x, w, f=kernel)

        return Kernel(f"generalized({name})", fn, requires_projection=False, nonnegative=False)
    raise TypeError(f"kernel must be a registry name, a Kernel or a callable, got {type(kernel).__name__}")


def feature_map(
    x: Tensor,
    projection: Tensor | None,
    kernel: str | Kernel | Callable = "softmax",
    params: Tensor | float | None = None,
) -> Tensor:
    """Plain features ``φ(x)``: ``(..., L, D)`` → ``(..., L, M')``, with no stabilization.

    ``params``: the data-dependent parameters of kernels such as ``"favor++"`` (``A``: a float or
    ``x.shape[:-2]``), required for them and ignored otherwise.
    """
    kern = get_kernel(kernel)
    if kern.parameters is not None and params is not None and not isinstance(params, Tensor):
        params = torch.tensor(float(params), dtype=x.dtype, device=x.device)
    gerf = kern.fn in (_favor_plus_plus, _gaussian_favor_plus_plus)
    if gerf and params is not None and projection is not None:
        # A user-given A is checked here (the attention path skips the check: no host sync).
        return optimal_positive_features(
            x, projection, params, gaussian=kern.fn is _gaussian_favor_plus_plus
        ).materialize()
    return kern(x, projection, params).materialize()


def stabilize_queries(features: FeatureMapOutput) -> Tensor:
    """Query features scaled per row so that each row's largest feature is 1 (exact, see above).

    Returns ``(..., L, M')``.
    """
    if features.log is None:
        assert features.linear is not None
        return features.linear
    log = features.log
    magnitude = torch.exp(log - log.detach().amax(dim=-1, keepdim=True))
    return magnitude if features.linear is None else features.linear * magnitude


def key_offsets(
    log: Tensor, *, causal: bool, pad: Tensor | None = None, start: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Key stabilizer offsets from key log-features ``log`` ``(B, H, L, M')`` (detached inside).

    Bidirectional: the maximum over all non-padded keys and features. Causal: the running
    maximum over positions ``≤ j``, starting from ``start`` ``(B, H)`` (the offset of a state
    that precedes these keys, or ``-inf``). ``pad``: ``(B, 1, L)`` bool, True = padded key.

    Returns ``(offsets (B, H, L), last)``: positions that have seen no key yet get the
    placeholder 0 (their features are zero anyway); ``last`` ``(B, H)`` is the raw running
    maximum after the last position (``-inf`` if none), to continue from.
    """
    per_position = log.detach().amax(dim=-1)
    if pad is not None:
        per_position = per_position.masked_fill(pad, -math.inf)
    if causal:
        offsets = torch.cummax(per_position, dim=-1).values
        if start is not None:
            offsets = torch.maximum(offsets, start[..., None])
    else:
        offsets = per_position.amax(dim=-1, keepdim=True).expand_as(per_position)
    last = offsets[..., -1]
    return torch.where(torch.isfinite(offsets), offsets, torch.zeros_like(offsets)), last


def stabilize_keys(
    features: FeatureMapOutput,
    *,
    causal: bool,
    key_padding_mask: Tensor | None = None,
    initial_offset: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Key features divided by ``exp(offset)``, with padded keys set to zero.

    Args:
        features: key features of ``(B, H, L, ·)`` inputs.
        causal: use the running maximum over positions ``≤ j`` (see the module docstring);
            otherwise one maximum over all non-padded positions.
        key_padding_mask: ``(B, L)`` bool, True marks a padded key (ignored everywhere).
        initial_offset: ``(B, H)`` offset of a causal state that precedes these keys; the
            running maximum starts from it.

    Returns:
        ``(features, offsets)``: features ``(B, H, L, M')`` with true ``φ(k_j) =
        features_j · exp(offsets_j)``; offsets ``(B, H, L)`` (non-decreasing when causal), or
        None when the map has no exponential part.
    """
    pad = None if key_padding_mask is None else key_padding_mask[:, None, :]
    if features.log is None:
        assert features.linear is not None
        linear = features.linear
        if pad is not None:
            linear = linear.masked_fill(pad[..., None], 0.0)
        return linear, None

    log = features.log
    offsets, _ = key_offsets(log, causal=causal, pad=pad, start=initial_offset)
    shifted = log - offsets[..., None]
    if pad is not None:
        shifted = shifted.masked_fill(pad[..., None], -math.inf)
    magnitude = torch.exp(shifted)
    out = magnitude if features.linear is None else features.linear * magnitude
    return out, offsets


class _StabilizedExpFeatures(torch.autograd.Function):
    """``φ = exp(x·(sP)ᵀ - [s²‖x‖²/2] - shift)`` computed in place, with a hand-written backward.

    Forward allocates one ``(..., L, M)`` tensor (the matmul output, exponentiated in place)
    instead of one per elementwise step, and only ``φ`` is kept for backward:
    ``∂x = (g ⊙ φ)(sP) - s² rowsum(g ⊙ φ) x`` (the shift is a detached stabilizer).
    """

    @staticmethod
    def forward(ctx, x, rows, scale, with_norm, shift_fn, pad):
        scaled_rows = rows * scale
        log = torch.matmul(x, scaled_rows.transpose(-2, -1))
        if with_norm:
            log.sub_((0.5 * scale * scale) * (x * x).sum(-1, keepdim=True))
        shift, offsets = shift_fn(log)
        features = log.sub_(shift).exp_()
        if pad is not None:
            features.masked_fill_(pad, 0.0)
        ctx.save_for_backward(features, x, scaled_rows)
        ctx.scale, ctx.with_norm = scale, with_norm
        ctx.mark_non_differentiable(offsets)
        return features, offsets

    @staticmethod
    def backward(ctx, grad_features, _grad_offsets):
        features, x, scaled_rows = ctx.saved_tensors
        grad_log = grad_features * features
        grad_x = grad_rows = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.matmul(grad_log, scaled_rows)
            if ctx.with_norm:
                grad_x.sub_(grad_log.sum(-1, keepdim=True) * x, alpha=ctx.scale * ctx.scale)
        if ctx.needs_input_grad[1]:
            flat_log = grad_log.reshape(-1, grad_log.shape[-1])
            grad_rows = torch.matmul(flat_log.transpose(0, 1), x.reshape(-1, x.shape[-1])) * ctx.scale
        return grad_x, grad_rows, None, None, None, None


def stabilized_exp_features(
    x: Tensor,
    rows: Tensor,
    *,
    scale: float,
    log_const: float,
    role: str,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    initial_offset: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Fused, stabilized features ``exp(P(√s·x) - s‖x‖²/2 - c)`` of queries or keys.

    Same result as :func:`stabilize_queries` / :func:`stabilize_keys` applied to the map, up to
    rounding; see the module docstring for the stabilizers.

    Args:
        x: ``(B, H, L, D)``.
        rows: ``P``, ``(M', D)``.
        scale: ``√s``, the factor applied to ``x``.
        log_const: ``c``.
        role: ``"query"`` (row maximum: ``‖x‖²`` and ``c`` are per-row factors and cancel, so
            they are not even computed) or ``"key"``.
        causal, key_padding_mask, initial_offset: as in :func:`stabilize_keys`.

    Returns:
        ``(features (B, H, L, M'), offsets (B, H, L) or None)``, true ``φ = features·exp(offsets)``.
    """
    if role == "query":

        def query_shift(log: Tensor) -> tuple[Tensor, Tensor]:
            shift = log.amax(dim=-1, keepdim=True)
            return shift, shift.new_zeros(())

        features, _ = _StabilizedExpFeatures.apply(x, rows, scale, False, query_shift, None)
        return features, None

    pad = None if key_padding_mask is None else key_padding_mask[:, None, :, None]

    def key_shift(log: Tensor) -> tuple[Tensor, Tensor]:
        start = None if initial_offset is None else initial_offset + log_const
        offsets, _ = key_offsets(log, causal=causal, pad=None if pad is None else pad[..., 0], start=start)
        # Callers see offsets of the map including its constant c.
        return offsets.unsqueeze(-1), offsets - log_const

    return _StabilizedExpFeatures.apply(x, rows, scale, True, key_shift, pad)


# Shared by the fused attention paths (bidirectional and causal).


def exp_query_features(q: Tensor, scaled_rows: Tensor) -> Tensor:
    """Row-stabilized ``exp(q Pᵀ - max)``: ``(..., L, D)`` → ``(..., L, M')`` (norm term cancels)."""
    log = torch.matmul(q, scaled_rows.transpose(-2, -1))
    return log.sub_(log.amax(dim=-1, keepdim=True)).exp_()


def exp_key_log_features(k: Tensor, scaled_rows: Tensor, scale_sq: float) -> Tensor:
    """Key log-features ``k Pᵀ - s‖k‖²/2`` (``scaled_rows = √s·P``): ``(..., L, M')``."""
    log = torch.matmul(k, scaled_rows.transpose(-2, -1))
    return log.sub_((0.5 * scale_sq) * (k * k).sum(-1, keepdim=True))


def outer_sum(grad_log: Tensor, x: Tensor) -> Tensor:
    """``Σ_{b,h,l} grad_log[..., l, :]ᵀ x[..., l, :]``: ``(M', D)``."""
    return torch.matmul(grad_log.reshape(-1, grad_log.shape[-1]).transpose(0, 1), x.reshape(-1, x.shape[-1]))
