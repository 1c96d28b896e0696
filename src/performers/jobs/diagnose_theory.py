"""The theory's prediction of FAVOR attention's output error, for given queries, keys and values.

Lemma 2 of Choromanski et al. (ICLR 2021) gives the variance of one kernel entry
``K̂_ij ≈ exp(q̃_iᵀk̃_j)`` (:mod:`performers.ops.theory`). Attention normalizes a whole row,
``ô_i = Σ_j K̂_ij v_j / Σ_j K̂_ij``, and the entries of a row share the same random ``ω``, so
they are correlated. To first order in the relative errors ``ε_ij = K̂_ij / K_ij − 1``
(the delta method, exact as ``M → ∞``)::

    ô_i − o_i ≈ Σ_j p_ij ε_ij (v_j − o_i),     p_ij = softmax_j(q̃_iᵀk̃_j)
    M · E‖ô_i − o_i‖² ≈ Σ_{j,j'} p_ij p_ij' C(a_j, a_j') (v_j − o_i)ᵀ(v_j' − o_i),  a_j = q̃_i + k̃_j

with ``C = M · Cov(ε_ij, ε_ij')`` for iid Gaussian ``ω`` (derived like Lemma 2; on the diagonal
``j = j'`` each is Lemma 2's relative MSE, e.g. ``e^{‖q̃+k̃‖²} − 1`` for positive features):

* ``softmax`` (positive features): ``C = exp(aᵀa') − 1``;
* ``softmax-hyperbolic`` (``M`` projections, ``2M`` features): ``C = cosh(aᵀa') − 1``;
* ``favor++`` (GERF with the shared parameter ``A`` of the (batch, head)):
  ``C = ((1−4A)²/(1−8A))^{d/2} exp((1−4A)‖a+a'‖² / (2(1−8A)) − (‖a‖² + ‖a'‖²)/2) − 1``.

So the predicted relative error of a head is ``√(T / M)`` with one constant ``T`` per head
(:func:`theory_constants`): it falls as ``1/√M`` and grows like ``e^{‖q̃+k̃‖²}`` — heavy logits
make ``T`` explode. Orthogonal projections should come out at or below the iid prediction
(Theorem 2). The first-order expansion fails once the predicted error is no longer small
(≳ 0.3): there the prediction is only an order of magnitude.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from performers.ops import KERNELS

__all__ = ["THEORY_KERNELS", "favor_plus_plus_a", "sample_queries", "theory_constants"]

THEORY_KERNELS = ("softmax", "softmax-hyperbolic", "favor++")
# Exponents are clipped here: beyond it the prediction is astronomically large anyway (heavy
# logits), and clipping keeps the quadratic form finite instead of inf − inf = NaN.
_MAX_EXPONENT = 300.0
# Elements of the (queries × keys × keys) covariance blocks built at once (memory bound).
_BLOCK_ELEMENTS = 4_000_000


def favor_plus_plus_a(qs: Tensor, ks: Tensor, *, causal: bool, key_padding_mask: Tensor | None) -> Tensor:
    """FAVOR++'s ``A`` per (batch, head), as attention computes it: ``qs, ks`` ``(B, H, L, D)``
    already multiplied by ``√scale`` → ``(B, H)``."""
    hook = KERNELS["favor++"].parameters
    return hook(qs, ks, causal=causal, key_padding_mask=key_padding_mask)


def sample_queries(keep: Tensor, max_queries: int, generator: torch.Generator) -> Tensor:
    """A bool ``(B, L)`` mask of at most ``max_queries`` real positions per sequence (uniform,
    without replacement) among ``keep`` ``(B, L)`` (True = real token): the queries whose
    statistics and theory are computed (all of them when a sequence has fewer)."""
    chosen = torch.zeros_like(keep)
    for b in range(keep.shape[0]):
        real = keep[b].nonzero().flatten()
        if real.numel() > max_queries:
            real = real[torch.randperm(real.numel(), generator=generator)[:max_queries]]
        chosen[b, real] = True
    return chosen


def _covariance(kernel: str, a: Tensor, a_param: Tensor | None, dim: int) -> Tensor:
    """``C`` of the module docstring for ``a`` ``(Q, L, D)`` → ``(Q, L, L)``."""
    gram = a @ a.transpose(-1, -2)
    if kernel == "softmax":
        return torch.expm1(gram.clamp(max=_MAX_EXPONENT))
    if kernel == "softmax-hyperbolic":
        return torch.cosh(gram.clamp(-_MAX_EXPONENT, _MAX_EXPONENT)) - 1
    if kernel == "favor++":
        assert a_param is not None
        big_a = a_param
        sq = (a * a).sum(-1)
        pair_sq = sq[:, :, None] + sq[:, None, :] + 2 * gram  # ‖a + a'‖²
        log_c = 0.5 * dim * (2 * math.log1p(-4 * big_a) - math.log1p(-8 * big_a))
        exponent = (
            log_c + (1 - 4 * big_a) * pair_sq / (2 * (1 - 8 * big_a)) - (sq[:, :, None] + sq[:, None, :]) / 2
        )
        return torch.expm1(exponent.clamp(max=_MAX_EXPONENT))
    raise ValueError(f"kernel {kernel!r} has no attention-error theory here; choose from {THEORY_KERNELS}")


def theory_constants(
    qs: Tensor,
    ks: Tensor,
    v: Tensor,
    *,
    kernel: str,
    queries: Tensor,
    key_padding_mask: Tensor | None = None,
    causal: bool = False,
    a_param: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per head, ``Σ_i M·E‖ô_i − o_i‖²`` and ``Σ_i ‖o_i‖²`` over the chosen queries.

    The predicted relative error of head ``h`` at ``M`` features is
    ``√(numerator[h] / (M · denominator[h]))`` (summing over the batch).

    Args:
        qs, ks: ``(B, H, L, D)`` queries and keys already multiplied by ``√scale``.
        v: ``(B, H, L, Dv)``.
        kernel: one of :data:`THEORY_KERNELS`.
        queries: ``(B, L)`` bool, the query positions to sum over (real tokens only).
        key_padding_mask: ``(B, L)`` bool, True = padded key (never enters any sum).
        causal: query ``i`` sees keys ``j ≤ i``.
        a_param: FAVOR++'s ``A`` ``(B, H)`` (default: computed as attention does).

    Returns:
        ``(numerator (H,), denominator (H,))`` in float64.
    """
    qs, ks, v = qs.double(), ks.double(), v.double()
    batch, heads, length, dim = qs.shape
    if kernel == "favor++" and a_param is None:
        a_param = favor_plus_plus_a(qs, ks, causal=causal, key_padding_mask=key_padding_mask)
    numerator = torch.zeros(heads, dtype=torch.float64)
    denominator = torch.zeros(heads, dtype=torch.float64)
    positions = torch.arange(length)
    for b in range(batch):
        rows = queries[b].nonzero().flatten()
        if rows.numel() == 0:
            continue
        key_ok = torch.ones(length, dtype=torch.bool) if key_padding_mask is None else ~key_padding_mask[b]
        step = max(1, _BLOCK_ELEMENTS // (length * length))
        for h in range(heads):
            param = None if a_param is None else float(a_param[b, h])
            for start in range(0, rows.numel(), step):
                i = rows[start : start + step]
                visible = key_ok[None, :].expand(i.numel(), length)
                if causal:
                    visible = visible & (positions[None, :] <= i[:, None])
                logits = qs[b, h, i] @ ks[b, h].T  # (Q, L)
                p = torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1).nan_to_num(0.0)
                o = p @ v[b, h]  # (Q, Dv)
                w = p[:, :, None] * (v[b, h][None] - o[:, None, :])  # p_ij (v_j − o_i): (Q, L, Dv)
                a = qs[b, h, i][:, None, :] + ks[b, h][None]  # (Q, L, D)
                cov = _covariance(kernel, a, param, dim).masked_fill(~visible[:, None, :], 0.0)
                cov = cov.masked_fill(~visible[:, :, None], 0.0)
                numerator[h] += torch.einsum("qjk,qjd,qkd->", cov, w, w)
                denominator[h] += (o * o).sum()
    return numerator, denominator
