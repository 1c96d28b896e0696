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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "KERNELS",
    "FeatureMapOutput",
    "Kernel",
    "feature_map",
    "generalized_features",
    "get_kernel",
    "hyperbolic_softmax_features",
    "key_offsets",
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


FeatureFn = Callable[[Tensor, "Tensor | None"], FeatureMapOutput]


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
    """

    name: str
    fn: FeatureFn
    requires_projection: bool
    nonnegative: bool
    features_per_row: int = 1
    exp_rows: Callable[[Tensor], tuple[Tensor, float]] | None = None

    def __call__(self, x: Tensor, projection: Tensor | None) -> FeatureMapOutput:
        return self.fn(x, projection)

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


for _kernel in (
    Kernel("softmax", positive_softmax_features, True, True, 1, _positive_rows),
    Kernel("softmax-hyperbolic", hyperbolic_softmax_features, True, True, 2, _hyperbolic_rows),
    Kernel("trig", trigonometric_softmax_features, True, False, 2),
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


def feature_map(x: Tensor, projection: Tensor | None, kernel: str | Kernel | Callable = "softmax") -> Tensor:
    """Plain features ``φ(x)``: ``(..., L, D)`` → ``(..., L, M')``, with no stabilization."""
    return get_kernel(kernel)(x, projection).materialize()


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
