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

The exponential form, written once
----------------------------------
The positive and hyperbolic maps of both the softmax and the Gaussian kernel are one formula,
``φ(x) = exp(P x − a‖x‖²/2 − c)`` (:class:`ExpForm`): softmax ``a = 1``, Gaussian ``a = 2``
(``exp(−‖x−y‖²/2) = SM(x, y)·e^{−‖x‖²/2}e^{−‖y‖²/2}``), ``P = W`` (positive) or the stacked
``[W; −W]`` (hyperbolic, ``[e^{Wx}, e^{−Wx}]``), ``c = ½ log M'``. Each such kernel describes
itself by its form (``Kernel.exp_form``). :func:`exp_log_features` computes the log: the maps
here, the fused stabilized features below and both fused attention paths
(:mod:`performers.ops.bidirectional.fused`, :mod:`performers.ops.causal.fused`) call it; the
hand-written backward passes all take its derivative from :func:`exp_log_input_grad`.

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
The offsets themselves are :func:`performers.ops.numerics.key_offsets`. FAVOR++ (data-dependent
parameters, its causal form and float range) is documented in :mod:`performers.ops.favor_plus_plus`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from performers.ops.numerics import key_offsets

__all__ = [
    "GENERALIZED_EPS",
    "ExpForm",
    "FeatureMapOutput",
    "exp_form",
    "exp_log_features",
    "exp_log_input_grad",
    "gaussian_hyperbolic_features",
    "gaussian_positive_features",
    "gaussian_trigonometric_features",
    "generalized_features",
    "hyperbolic_softmax_features",
    "positive_softmax_features",
    "stabilize_keys",
    "stabilize_queries",
    "stabilized_exp_features",
    "transposed_product",
    "trigonometric_softmax_features",
]


class FeatureMapOutput(NamedTuple):
    """Features factored as ``φ = linear · exp(log)``; ``None`` stands for 1 (resp. 0 in log).

    ``log`` is ``(..., L, M')`` or ``(..., L, 1)`` (a per-token magnitude); ``linear`` is
    ``(..., L, M')``. At least one of them is given.
    """

    log: Tensor | None
    linear: Tensor | None

    def materialize(self) -> Tensor:
        """The plain, unstabilized features ``φ(x)`` of shape ``(..., L, M')``."""
        if self.log is None:
            return _linear_part(self)
        magnitude = torch.exp(self.log)
        return magnitude if self.linear is None else self.linear * magnitude


def _linear_part(features: FeatureMapOutput) -> Tensor:
    if features.linear is None:
        raise ValueError("a FeatureMapOutput needs log or linear features (both are None)")
    return features.linear


def check_map_inputs(name: str, x: Tensor, projection: Tensor | None, *, required: bool = True) -> None:
    """Typed errors for a feature map's inputs: ``x`` ``(..., L, D)``, ``projection`` ``(M, D)``.

    ``projection`` may also be a batch ``(..., M, D)`` broadcasting with ``x``; None is accepted
    only when not ``required``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: x must be a torch.Tensor of shape (..., L, D), got {type(x).__name__}")
    if projection is None:
        if required:
            raise ValueError(f"{name} needs a projection of shape (M, D), got None")
        return
    if not isinstance(projection, Tensor):
        raise TypeError(
            f"{name}: projection must be a torch.Tensor of shape (M, D), got {type(projection).__name__}"
        )
    if projection.dim() < 2 or x.dim() == 0 or projection.shape[-1] != x.shape[-1]:
        raise ValueError(
            f"{name} needs a projection of shape (M, D) matching x of shape (..., L, D); "
            f"got projection {tuple(projection.shape)} and x {tuple(x.shape)}"
        )


def project(x: Tensor, projection: Tensor) -> Tensor:
    """``x Wᵀ``: ``(..., L, D)``, ``(M, D)`` → ``(..., L, M)``."""
    return torch.matmul(x, projection.transpose(-2, -1))


def half_sq_norm(x: Tensor) -> Tensor:
    """``‖x‖²/2``: ``(..., L, D)`` → ``(..., L, 1)``."""
    return 0.5 * (x * x).sum(dim=-1, keepdim=True)


# ---------------------------------------------------------------------------------------------
# The exponential form φ(x) = exp(P x − a‖x‖²/2 − c), its log and its derivative


class ExpForm(NamedTuple):
    """An exponential feature map ``φ(x) = exp(P x − a‖x‖²/2 − c)``.

    Attributes:
        rows: ``P``, ``(M', D)`` (``W`` or ``[W; −W]``).
        norm: ``a`` (1 for the softmax kernel, 2 for the Gaussian kernel).
        log_const: ``c`` (``½ log M'``; it cancels in normalized attention).
    """

    rows: Tensor
    norm: float
    log_const: float


def exp_form(projection: Tensor, *, antithetic: bool = False, norm: float = 1.0) -> ExpForm:
    """The :class:`ExpForm` of a projection ``W`` ``(M, D)``: ``P = W`` or ``[W; −W]`` (antithetic)."""
    rows = torch.cat([projection, -projection], dim=-2) if antithetic else projection
    return ExpForm(rows, norm, 0.5 * math.log(rows.shape[-2]))


def exp_log_features(x: Tensor, rows: Tensor, norm: float = 0.0, log_const: float = 0.0) -> Tensor:
    """``log φ(x) = x Pᵀ − (a/2)‖x‖² − c``: ``(..., L, D)`` → ``(..., L, M')``.

    ``rows`` is ``P`` ``(M', D)`` and ``norm`` is ``a``. The fused paths pass ``P·√s`` and
    ``a·s`` to get the map of ``x·√s`` without scaling ``x``; ``norm = 0`` leaves the norm out
    (it is a per-row factor, which cancels for queries). The result is a fresh tensor the caller
    may modify in place.
    """
    log = torch.matmul(x, rows.transpose(-2, -1))
    if norm:
        log.sub_((0.5 * norm) * (x * x).sum(-1, keepdim=True))
    if log_const:
        log.sub_(log_const)
    return log


def exp_log_input_grad(grad_log: Tensor, x: Tensor, rows: Tensor, norm: float = 0.0) -> Tensor:
    """``∂/∂x`` of ``Σ grad_log ⊙ exp_log_features(x, rows, norm)``: ``grad_log P − a·rowsum(grad_log)·x``.

    ``grad_log``: ``(..., L, M')``, ``x``: ``(..., L, D)`` → ``(..., L, D)``.
    """
    grad = torch.matmul(grad_log, rows)
    if norm:
        grad.sub_(grad_log.sum(-1, keepdim=True) * x, alpha=norm)
    return grad


def exp_query_features(q: Tensor, rows: Tensor, shift: Tensor | None = None) -> Tensor:
    """Row-stabilized ``exp(q Pᵀ + shift − max)``: ``(..., L, D)`` → ``(..., L, M')``.

    The norm term and ``c`` are per-row factors and cancel with the row maximum (see above).
    ``shift`` ``(..., 1, M')``: per-feature constants moved over from the keys (or None).
    """
    log = exp_log_features(q, rows)
    if shift is not None:
        log.add_(shift)
    return log.sub_(log.amax(dim=-1, keepdim=True)).exp_()


def transposed_product(a: Tensor, b: Tensor) -> Tensor:
    """``aᵀ b`` over a block of positions: ``(..., n, X)``, ``(..., n, Y)`` → ``(..., X, Y)``.

    float16/bfloat16 products copy their transposed operand (float32 ones read it in place), so
    there the narrower operand is the one transposed: ``(bᵀ a)ᵀ`` when ``b`` is narrower.
    """
    if a.dtype in (torch.float16, torch.bfloat16) and b.shape[-1] < a.shape[-1]:
        return torch.matmul(b.transpose(-2, -1), a).transpose(-2, -1)
    return torch.matmul(a.transpose(-2, -1), b)


def outer_sum(grad_log: Tensor, x: Tensor) -> Tensor:
    """``Σ_{b,h,l} grad_log[..., l, :]ᵀ x[..., l, :]``: ``(M', D)``, the gradient w.r.t. ``P``."""
    return transposed_product(grad_log.reshape(-1, grad_log.shape[-1]), x.reshape(-1, x.shape[-1]))


# ---------------------------------------------------------------------------------------------
# The feature maps


def _exp_map(
    name: str, x: Tensor, projection: Tensor | None, antithetic: bool, norm: float
) -> FeatureMapOutput:
    check_map_inputs(name, x, projection)
    form = exp_form(projection, antithetic=antithetic, norm=norm)
    return FeatureMapOutput(log=exp_log_features(x, *form), linear=None)


def positive_softmax_features(x: Tensor, projection: Tensor | None) -> FeatureMapOutput:
    """FAVOR+ positive features ``φ(x) = exp(Wx - ‖x‖²/2) / √M`` (Lemma 1, ``SM⁺``).

    ``x``: ``(..., L, D)``, ``projection``: ``(M, D)`` → features ``(..., L, M)``.
    """
    return _exp_map("positive_softmax_features", x, projection, antithetic=False, norm=1.0)


def hyperbolic_softmax_features(x: Tensor, projection: Tensor | None) -> FeatureMapOutput:
    """Antithetic features ``[exp(Wx), exp(-Wx)] · exp(-‖x‖²/2) / √(2M)`` (``SM^{hyp+}``).

    ``x``: ``(..., L, D)``, ``projection``: ``(M, D)`` → features ``(..., L, 2M)``.
    """
    return _exp_map("hyperbolic_softmax_features", x, projection, antithetic=True, norm=1.0)


def gaussian_positive_features(x: Tensor, projection: Tensor | None) -> FeatureMapOutput:
    """Positive features of the Gaussian kernel ``exp(−‖x−y‖²/2)``: ``exp(Wx − ‖x‖²) / √M``.

    The softmax map times ``exp(−‖x‖²/2)`` (``K = SM(x,y) e^{−‖x‖²/2} e^{−‖y‖²/2}``).
    ``x``: ``(..., L, D)``, ``projection``: ``(M, D)`` → ``(..., L, M)``.
    """
    return _exp_map("gaussian_positive_features", x, projection, antithetic=False, norm=2.0)


def gaussian_hyperbolic_features(x: Tensor, projection: Tensor | None) -> FeatureMapOutput:
    """Antithetic Gaussian-kernel features ``[exp(Wx), exp(−Wx)] · exp(−‖x‖²) / √(2M)``.

    ``x``: ``(..., L, D)``, ``projection``: ``(M, D)`` → ``(..., L, 2M)``.
    """
    return _exp_map("gaussian_hyperbolic_features", x, projection, antithetic=True, norm=2.0)


def _fourier(x: Tensor, projection: Tensor) -> Tensor:
    u = project(x, projection)
    return torch.cat([torch.cos(u), torch.sin(u)], dim=-1)


def trigonometric_softmax_features(x: Tensor, projection: Tensor | None) -> FeatureMapOutput:
    """Random Fourier features ``[cos Wx, sin Wx] · exp(‖x‖²/2) / √M`` (``SM^{trig}``).

    Unbiased but not positive. ``x``: ``(..., L, D)``, ``projection``: ``(M, D)`` →
    features ``(..., L, 2M)``.
    """
    check_map_inputs("trigonometric_softmax_features", x, projection)
    linear = _fourier(x, projection)
    return FeatureMapOutput(log=half_sq_norm(x) - 0.5 * math.log(projection.shape[-2]), linear=linear)


def gaussian_trigonometric_features(x: Tensor, projection: Tensor | None) -> FeatureMapOutput:
    """Random Fourier features of the Gaussian kernel, ``[cos Wx, sin Wx] / √M`` (Rahimi–Recht).

    ``x``: ``(..., L, D)``, ``projection``: ``(M, D)`` → ``(..., L, 2M)``.
    """
    check_map_inputs("gaussian_trigonometric_features", x, projection)
    return FeatureMapOutput(log=None, linear=_fourier(x, projection) * projection.shape[-2] ** -0.5)


# The constant added to generalized features (keeps the normalizer away from 0).
GENERALIZED_EPS = 1e-3


def generalized_features(
    x: Tensor, projection: Tensor | None, *, f: Callable[[Tensor], Tensor], eps: float = GENERALIZED_EPS
) -> FeatureMapOutput:
    """Generalized kernel features ``f(Wx) + eps``, or ``f(x) + eps`` when ``projection`` is None.

    ``x``: ``(..., L, D)``, ``projection``: ``(M, D)`` or None → ``(..., L, M)`` or ``(..., L, D)``.
    """
    check_map_inputs("generalized_features", x, projection, required=False)
    u = x if projection is None else project(x, projection)
    return FeatureMapOutput(log=None, linear=f(u) + eps)


# ---------------------------------------------------------------------------------------------
# Stabilization (see the module docstring)


def stabilize_queries(features: FeatureMapOutput) -> Tensor:
    """Query features scaled per row so that each row's largest feature is 1 (exact, see above).

    Returns ``(..., L, M')``.
    """
    if features.log is None:
        return _linear_part(features)
    log = features.log
    magnitude = torch.exp(log - log.detach().amax(dim=-1, keepdim=True))
    return magnitude if features.linear is None else features.linear * magnitude


def stabilize_keys(
    features: FeatureMapOutput,
    *,
    causal: bool,
    key_padding_mask: Tensor | None = None,
    initial_offset: Tensor | Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Key features divided by ``exp(offset)``, with padded keys set to zero.

    Args:
        features: key features of ``(B, H, L, ·)`` inputs.
        causal: use the running maximum over positions ``≤ j`` (see the module docstring);
            otherwise one maximum over all non-padded positions.
        key_padding_mask: ``(B, L)`` bool, True marks a padded key (ignored everywhere).
        initial_offset: ``(B, H)`` offset of a causal state that precedes these keys; the
            running maximum starts from it (bidirectionally: a floor of the maximum). Or a
            function of these keys' maximum ``(B, H)`` returning it (see
            :func:`performers.ops.numerics.key_offsets`).

    Returns:
        ``(features, offsets)``: features ``(B, H, L, M')`` with true ``φ(k_j) =
        features_j · exp(offsets_j)``; offsets ``(B, H, L)`` (non-decreasing when causal), or
        None when the map has no exponential part.
    """
    pad = None if key_padding_mask is None else key_padding_mask[:, None, :]
    if features.log is None:
        linear = _linear_part(features)
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
    """``φ = exp(x·(sP)ᵀ - [a·s²‖x‖²/2] - shift)`` computed in place, with a hand-written backward.

    Forward allocates one ``(..., L, M)`` tensor (the matmul output, exponentiated in place)
    instead of one per elementwise step, and only ``φ`` is kept for backward:
    ``∂x = (g ⊙ φ)(sP) - a·s² rowsum(g ⊙ φ) x`` (the shift is a detached stabilizer). That
    backward is built from differentiable operations on saved inputs and the output, so second
    derivatives (``create_graph=True``) need nothing more.
    """

    @staticmethod
    def forward(ctx, x, rows, scale, norm, shift_fn, pad):
        scaled_rows = rows * scale
        scaled_norm = norm * scale * scale
        log = exp_log_features(x, scaled_rows, scaled_norm)
        shift, offsets = shift_fn(log)
        features = log.sub_(shift).exp_()
        if pad is not None:
            features.masked_fill_(pad, 0.0)
        # `rows`, not `scaled_rows` (made here without a graph): with create_graph=True this
        # backward is itself differentiated, through the saved input and output.
        ctx.save_for_backward(features, x, rows)
        ctx.scale, ctx.scaled_norm = scale, scaled_norm
        ctx.mark_non_differentiable(offsets)
        return features, offsets

    @staticmethod
    def backward(ctx, grad_features, _grad_offsets):
        # Differentiable as written (no value computed without a graph; ``features`` is this
        # Function's own output, whose derivative autograd takes through this backward again),
        # so a second derivative needs no recomputation.
        features, x, rows = ctx.saved_tensors
        scaled_rows = rows * ctx.scale
        grad_log = grad_features * features
        grad_x = grad_rows = None
        if ctx.needs_input_grad[0]:
            grad_x = exp_log_input_grad(grad_log, x, scaled_rows, ctx.scaled_norm)
        if ctx.needs_input_grad[1]:
            grad_rows = outer_sum(grad_log, x) * ctx.scale
        return grad_x, grad_rows, None, None, None, None


def stabilized_exp_features(
    x: Tensor,
    form: ExpForm,
    *,
    scale: float,
    role: str,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    initial_offset: Tensor | Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Fused, stabilized features of ``x·√s`` for the map ``form`` (queries or keys).

    Same result as :func:`stabilize_queries` / :func:`stabilize_keys` applied to the map, up to
    rounding; see the module docstring for the stabilizers.

    Args:
        x: ``(B, H, L, D)``.
        form: the map ``exp(P x − a‖x‖²/2 − c)``, ``P`` of shape ``(M', D)``.
        scale: ``√s``, the factor applied to ``x``.
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

        features, _ = _StabilizedExpFeatures.apply(x, form.rows, scale, 0.0, query_shift, None)
        return features, None
    if role != "key":
        raise ValueError(f"role must be 'query' or 'key', got {role!r}")

    pad = None if key_padding_mask is None else key_padding_mask[:, None, :, None]
    log_const = form.log_const

    def key_shift(log: Tensor) -> tuple[Tensor, Tensor]:
        # The log here includes c; offsets given or returned to callers do not.
        if callable(initial_offset):

            def start(maximum: Tensor) -> Tensor:
                return initial_offset(maximum - log_const) + log_const

        else:
            start = None if initial_offset is None else initial_offset + log_const
        offsets, _ = key_offsets(log, causal=causal, pad=None if pad is None else pad[..., 0], start=start)
        # Callers see offsets of the map including its constant c.
        return offsets.unsqueeze(-1), offsets - log_const

    return _StabilizedExpFeatures.apply(x, form.rows, scale, form.norm, key_shift, pad)
