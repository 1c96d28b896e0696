r"""Fused bidirectional FAVOR attention for exponential feature maps, in blocks of positions.

For ``φ(x) = exp(P x̃ - a‖x̃‖²/2 - c)`` (:class:`~performers.ops.features.ExpForm`: positive and
hyperbolic features of the softmax and Gaussian kernels) this computes
``out = φ(Q)(φ(K)ᵀV) / φ(Q)(φ(K)ᵀ1)`` without ever holding a full ``(B, H, L, M)`` feature tensor:
keys are consumed block by block into the ``M × Dv`` summary and ``M`` normalizer
(:func:`exp_key_summary`), queries are read out block by block (:func:`exp_query_readout`), and
the backward pass recomputes each block of key features instead of storing them (query features
are stored: one ``L·M`` tensor). The two halves are separate autograd Functions so that a
summary can be combined with others before it is read (context parallelism sums the summaries
of every shard of a sequence, :mod:`performers.distributed`). Each feature block is small
enough to stay in cache while it is exponentiated, scaled and multiplied, which is where a
plain implementation spends its time on memory traffic. The generic path on materialized
features is :mod:`performers.ops.bidirectional.generic`.

Stabilization is the same as :func:`performers.ops.features.stabilize_keys`: queries by their
row maximum, keys by the maximum over all non-padded keys. Keys are streamed, so the summary is
rescaled by ``exp(m_old - m_new)`` whenever a block raises the maximum (exact: it multiplies
every term already summed by the same factor).

Second derivatives: a backward run with ``create_graph=True`` differentiates a PyTorch
recomputation of each Function's forward from its saved inputs instead
(:mod:`performers.ops.double_backward`; it materializes the features).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from performers.ops.checks import check_positive_int
from performers.ops.double_backward import graph_backward, wants_graph
from performers.ops.features import (
    ExpForm,
    exp_log_features,
    exp_log_input_grad,
    exp_query_features,
    outer_sum,
    transposed_product,
)
from performers.ops.numerics import accumulation_dtype, safe_reciprocal

__all__ = [
    "default_block_size",
    "exp_key_summary",
    "exp_query_readout",
    "fused_bidirectional_exp_attention",
]


def default_block_size(batch_heads: int, feature_dim: int) -> int:
    """Rows per block so that one feature block holds about 2^19 elements (2 MiB in float32)."""
    return max(16, (1 << 19) // max(1, batch_heads * feature_dim))


def _blocks(length: int, block: int) -> Iterator[tuple[int, int]]:
    for start in range(0, length, block):
        yield start, min(start + block, length)


def sum_keys(
    kv: Tensor,
    normalizer: Tensor,
    k: Tensor,
    v: Tensor,
    scaled_rows: Tensor,
    scaled_norm: float,
    pad: Tensor | None,
    block: int,
    per_feature: bool,
) -> Tensor:
    """Keys ``k`` ``(B, H, L, D)`` and values ``v`` into the zeroed ``kv`` ``(B, H, M', Dv)`` and
    ``normalizer`` ``(B, H, 1, M')`` (accumulation dtype; views of larger buffers are fine), block
    by block; returns the key maxima ``(B, H, 1, M' or 1)`` they are in units of (``-inf``
    where every key is padded). The forward of :class:`_ExpKeySummary`, also run once per
    sequence by the packed Function (:mod:`performers.ops.bidirectional.packed`)."""
    b, h, lk, _ = k.shape
    acc = kv.dtype
    # One maximum per (batch, head), or one per feature (the query side takes it back).
    key_max = k.new_full((b, h, 1, scaled_rows.shape[0] if per_feature else 1), -math.inf, dtype=acc)
    reduced = (-2,) if per_feature else (-2, -1)
    for start, stop in _blocks(lk, block):
        log = exp_log_features(k[:, :, start:stop], scaled_rows, scaled_norm)
        if pad is not None:
            log.masked_fill_(pad[:, :, start:stop], -math.inf)
        # (An offset in the log's dtype: low-precision blocks subtract exactly this value.)
        new_max = torch.maximum(key_max, log.amax(dim=reduced, keepdim=True).to(acc))
        # A still-empty summary (everything padded so far) needs no rescaling.
        safe_max = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
        if start > 0:
            rescale = torch.exp(key_max - safe_max)
            kv.mul_(rescale.transpose(-2, -1))
            normalizer.mul_(rescale)
        features = log.sub_(safe_max.to(log.dtype)).exp_()
        kv.add_(transposed_product(features, v[:, :, start:stop]))
        normalizer.add_(features.sum(dim=-2, keepdim=True))
        key_max = new_max
    return key_max


def key_grads(
    grads: tuple[Tensor | None, Tensor | None, Tensor | None],
    k: Tensor,
    v: Tensor,
    grad_kv: Tensor,
    grad_normalizer: Tensor,
    key_max: Tensor,
    scaled_rows: Tensor,
    scaled_norm: float,
    scale: float,
    pad: Tensor | None,
    block: int,
) -> None:
    """The backward of :func:`sum_keys` for finite maxima ``key_max`` (in the inputs' dtype, as
    are ``grad_kv`` and ``grad_normalizer``): writes ``grads = (grad_k, grad_v, grad_rows)``
    in place (each None when not wanted; ``grad_k``, ``grad_v`` shaped as ``k``, ``v`` — views
    are fine —, ``grad_rows`` ``(M', D)`` accumulated). Each block of key features is
    recomputed, not stored."""
    grad_k, grad_v, grad_rows = grads
    for start, stop in _blocks(k.shape[2], block):
        kb = k[:, :, start:stop]
        features = exp_log_features(kb, scaled_rows, scaled_norm).sub_(key_max).exp_()
        if pad is not None:
            features.masked_fill_(pad[:, :, start:stop], 0.0)
        if grad_v is not None:
            grad_v[:, :, start:stop] = torch.matmul(features, grad_kv)
        if grad_k is not None or grad_rows is not None:
            grad_log = torch.matmul(v[:, :, start:stop], grad_kv.transpose(-2, -1))
            grad_log.add_(grad_normalizer).mul_(features)
            if grad_k is not None:
                grad_k[:, :, start:stop] = exp_log_input_grad(grad_log, kb, scaled_rows, scaled_norm)
            if grad_rows is not None:
                # ∂/∂P of x̃ᵀP (the norm term does not involve P).
                grad_rows.add_(outer_sum(grad_log, kb), alpha=scale)


class _ExpKeySummary(torch.autograd.Function):
    """Keys and values → the summary ``kv = K'ᵀV`` ``(B, H, M', Dv)`` and normalizer ``z = K'ᵀ1``
    ``(B, H, 1, M')``, in units of the largest key log-feature (returned, not differentiable).

    The summary is kept as ``kv`` and ``z`` rather than one ``M' × (Dv+1)`` matrix: with
    ``Dv = 64`` the odd width costs the matmuls more than the separate row sums cost. Backward
    recomputes each block of key features instead of storing them.
    """

    @staticmethod
    def forward(ctx, k, v, rows, scale, norm, pad, block, per_feature):
        # The map of x̃ = √s·x is computed on x with rows √s·P and norm weight a·s.
        scaled_rows = rows * scale
        scaled_norm = norm * scale * scale
        b, h = k.shape[:2]
        m = scaled_rows.shape[0]
        acc = accumulation_dtype(k.dtype)
        kv = k.new_zeros(b, h, m, v.shape[-1], dtype=acc)
        normalizer = k.new_zeros(b, h, 1, m, dtype=acc)
        key_max = sum_keys(kv, normalizer, k, v, scaled_rows, scaled_norm, pad, block, per_feature)
        ctx.save_for_backward(k, v, rows, torch.where(torch.isfinite(key_max), key_max, 0.0))
        ctx.pad, ctx.block, ctx.scale, ctx.scaled_norm = pad, block, scale, scaled_norm
        key_max = key_max[..., 0, :] if per_feature else key_max[..., 0, 0]
        ctx.mark_non_differentiable(key_max)
        return kv, normalizer, key_max

    @staticmethod
    def backward(ctx, grad_kv, grad_normalizer, _grad_key_max):
        k, v, rows, key_max = ctx.saved_tensors
        pad, block, scale, scaled_norm = ctx.pad, ctx.block, ctx.scale, ctx.scaled_norm
        if wants_graph():  # create_graph=True: a differentiable recomputation (double_backward)
            grads = graph_backward(
                (k, v, rows),
                ctx.needs_input_grad[:3],
                lambda k, v, rows: _key_summary_graph(k, v, rows, key_max, pad, scale, scaled_norm),
                (grad_kv, grad_normalizer),
            )
            return (*grads, None, None, None, None, None)
        need_k, need_v, need_rows = ctx.needs_input_grad[:3]
        if grad_kv is None:
            grad_kv = k.new_zeros(*k.shape[:2], rows.shape[0], v.shape[-1])
        if grad_normalizer is None:
            grad_normalizer = k.new_zeros(*k.shape[:2], 1, rows.shape[0])
        # Products in the inputs' dtype; the projection's gradient accumulates in float32.
        grad_kv, grad_normalizer, key_max = (t.to(k.dtype) for t in (grad_kv, grad_normalizer, key_max))
        grad_k = torch.empty_like(k) if need_k else None
        grad_v = torch.empty_like(v) if need_v else None
        grad_rows = torch.zeros_like(rows, dtype=accumulation_dtype(rows.dtype)) if need_rows else None
        key_grads(
            (grad_k, grad_v, grad_rows), k, v, grad_kv, grad_normalizer, key_max,
            rows * scale, scaled_norm, scale, pad, block,
        )  # fmt: skip
        grad_rows = None if grad_rows is None else grad_rows.to(rows.dtype)
        return grad_k, grad_v, grad_rows, None, None, None, None, None


def read_queries(
    outs: tuple[Tensor, Tensor, Tensor | None],
    q: Tensor,
    scaled_rows: Tensor,
    kv_in: Tensor,
    normalizer_in: Tensor,
    shift: Tensor | None,
    block: int,
    eps: float,
) -> None:
    """Queries ``q`` ``(B, H, L, D)`` read against one summary (``kv_in`` ``(B, H', M', Dv)``,
    ``normalizer_in`` ``(B, H', 1, M')`` in the queries' dtype, ``H'`` = ``H`` or 1, which
    broadcasts), block by block, into ``outs = (out, inverse_denominator, q_features)``
    (``(B, H, L, Dv)``, ``(B, H, L, 1)`` in the accumulation dtype, ``(B, H, L, M')`` or None;
    views are fine). The forward of :class:`_ExpQueryReadout`, also run once per sequence by
    the packed Function."""
    out, inverse_denominator, q_features = outs
    accumulate = inverse_denominator.dtype
    for start, stop in _blocks(q.shape[2], block):
        features = exp_query_features(q[:, :, start:stop], scaled_rows, shift)
        if q_features is not None:
            q_features[:, :, start:stop] = features
        if q.dtype == accumulate:
            den = (features * normalizer_in).sum(-1)
        else:  # a product: a sum in float32 would first copy the block to float32
            den = torch.matmul(features, normalizer_in.transpose(-2, -1)).squeeze(-1).to(accumulate)
        inverse = _guarded_reciprocal(den, eps).unsqueeze(-1)
        inverse_denominator[:, :, start:stop] = inverse
        out[:, :, start:stop] = torch.matmul(features, kv_in).mul_(inverse)


def _guarded_reciprocal(den: Tensor, eps: float) -> Tensor:
    """:func:`~performers.ops.numerics.safe_reciprocal` of a fresh denominator ``den >= 0`` (a
    sum of positive features: ``|den| = den``), in place: 1/den, 0 where ``den < eps``. Three
    operations instead of its gradient-safe six — once per block, and a packed row has one
    block per sequence (measured 76 µs vs 27 µs on a ``(1, 8, 270)`` block, CPU)."""
    small = den < eps
    return den.reciprocal_().masked_fill_(small, 0.0)


def _reduced_add(total: Tensor, term: Tensor) -> None:
    """``total += term``, summing ``term`` over the heads when ``total`` has one head that the
    queries broadcast over (grouped query heads of the packed Function)."""
    if term.shape[1] != total.shape[1]:
        term = term.sum(dim=1, keepdim=True)
    total.add_(term)


def readout_grads(
    grads: tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None],
    grad_out: Tensor,
    saved: tuple[Tensor, Tensor | None, Tensor, Tensor],
    kv_in: Tensor,
    normalizer_in: Tensor,
    shift: Tensor | None,
    scaled_rows: Tensor,
    scale: float,
    block: int,
) -> None:
    """The backward of :func:`read_queries`: ``grads = (grad_q, grad_rows, grad_kv,
    grad_normalizer)`` written (``grad_q``, a view is fine) or accumulated in place (each None
    when not wanted), from ``grad_out`` and ``saved = (q, q_features or None,
    inverse_denominator, out)`` of the forward (``q_features`` None: recomputed)."""
    grad_q, grad_rows, grad_kv, grad_normalizer = grads
    q, q_features, inverse_denominator, out = saved
    low = q.dtype != inverse_denominator.dtype  # float16/bfloat16 products, float32 sums
    for start, stop in _blocks(q.shape[2], block):
        if q_features is None:  # the forward's own operations: the same values
            features = exp_query_features(q[:, :, start:stop], scaled_rows, shift)
        else:
            features = q_features[:, :, start:stop]
        inverse = inverse_denominator[:, :, start:stop]
        # out = num/den: ∂num = g/den, ∂den = -Σ g·out/den (zero where the guard was active).
        grad_num = grad_out[:, :, start:stop] * inverse
        grad_den = -(grad_num * out[:, :, start:stop]).sum(-1, keepdim=True)
        if low:
            grad_num, grad_den = grad_num.to(q.dtype), grad_den.to(q.dtype)
        if grad_kv is not None:
            _reduced_add(grad_kv, transposed_product(features, grad_num))
        if grad_normalizer is not None:
            if low:
                _reduced_add(grad_normalizer, transposed_product(grad_den, features))
            else:
                _reduced_add(grad_normalizer, (features * grad_den).sum(dim=-2, keepdim=True))
        if grad_q is not None or grad_rows is not None:
            grad_log = torch.matmul(grad_num, kv_in.transpose(-2, -1))
            grad_log.addcmul_(grad_den, normalizer_in).mul_(features)
            qb = q[:, :, start:stop]
            if grad_q is not None:
                # Query features are row-stabilized: no norm term (it cancels).
                grad_q[:, :, start:stop] = exp_log_input_grad(grad_log, qb, scaled_rows)
            if grad_rows is not None:
                grad_rows.add_(outer_sum(grad_log, qb), alpha=scale)


class _ExpQueryReadout(torch.autograd.Function):
    """Queries and a key summary → ``out = φ(Q)kv / φ(Q)z`` ``(B, H, Lq, Dv)``, block by block;
    ``shift`` ``(B, H, 1, M')`` (or None) is added to the query log-features: the per-feature
    key maxima taken out of a summary (a constant: no gradient). ``recompute``: backward
    recomputes the query features instead of keeping them (no ``(B, H, Lq, M')`` tensor)."""

    @staticmethod
    def forward(ctx, q, rows, kv, normalizer, scale, block, eps, shift, recompute):
        scaled_rows = rows * scale
        b, h, lq, _ = q.shape
        m, dv = scaled_rows.shape[0], kv.shape[-1]
        acc = accumulation_dtype(q.dtype)
        out = q.new_empty(b, h, lq, dv)
        inverse_denominator = q.new_empty(b, h, lq, 1, dtype=acc)
        # Query features are kept for backward (one (B, H, Lq, M) tensor) unless `recompute`:
        # writing and reading them back costs less than recomputing them (a matmul and an exp),
        # but it is the largest tensor a layer keeps when M exceeds the head dimension.
        keep = any(ctx.needs_input_grad[:4]) and not recompute
        q_features = q.new_empty(b, h, lq, m) if keep else None
        # The summary (accumulated in float32) enters the products in the queries' dtype.
        read_queries(
            (out, inverse_denominator, q_features), q, scaled_rows, kv.to(q.dtype), normalizer.to(q.dtype),
            shift, block, eps,
        )  # fmt: skip
        ctx.save_for_backward(q, rows, kv, normalizer, inverse_denominator, out, q_features, shift)
        ctx.block, ctx.scale, ctx.eps = block, scale, eps
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, rows, kv, normalizer, inverse_denominator, out, q_features, shift = ctx.saved_tensors
        block, scale = ctx.block, ctx.scale
        if wants_graph():  # create_graph=True: a differentiable recomputation (double_backward)
            grads = graph_backward(
                (q, rows, kv, normalizer),
                ctx.needs_input_grad[:4],
                lambda q, rows, kv, normalizer: (
                    _query_readout_graph(q, rows, kv, normalizer, shift, scale, ctx.eps),
                ),
                (grad_out,),
            )
            return (*grads, None, None, None, None, None)
        need_q, need_rows, need_kv, need_normalizer = ctx.needs_input_grad[:4]
        grad_kv = torch.zeros_like(kv) if need_kv else None
        grad_normalizer = torch.zeros_like(normalizer) if need_normalizer else None
        grad_q = torch.empty_like(q) if need_q else None
        grad_rows = torch.zeros_like(rows, dtype=accumulation_dtype(q.dtype)) if need_rows else None
        readout_grads(
            (grad_q, grad_rows, grad_kv, grad_normalizer), grad_out,
            (q, q_features, inverse_denominator, out), kv.to(q.dtype), normalizer.to(q.dtype), shift,
            rows * scale, scale, block,
        )  # fmt: skip
        return (
            grad_q,
            None if grad_rows is None else grad_rows.to(rows.dtype),
            grad_kv,
            grad_normalizer,
            None,
            None,
            None,
            None,
            None,
        )


def _key_summary_graph(
    k: Tensor, v: Tensor, rows: Tensor, key_max: Tensor, pad: Tensor | None, scale: float, scaled_norm: float
) -> tuple[Tensor, Tensor]:
    """:class:`_ExpKeySummary`'s ``(kv, normalizer)`` in differentiable operations, all keys at
    once, in the units of the forward's (detached) maxima ``key_max``."""
    acc = accumulation_dtype(k.dtype)
    k, v, rows = k.to(acc), v.to(acc), rows.to(acc)
    log = exp_log_features(k, rows * scale, scaled_norm)
    if pad is not None:  # -inf before exp: a padded key is an exact 0 with a zero gradient
        log = log.masked_fill(pad, -math.inf)
    features = torch.exp(log - key_max.to(acc))
    return transposed_product(features, v), features.sum(dim=-2, keepdim=True)


def _query_readout_graph(
    q: Tensor, rows: Tensor, kv: Tensor, normalizer: Tensor, shift: Tensor | None, scale: float, eps: float
) -> Tensor:
    """:class:`_ExpQueryReadout`'s output in differentiable operations, all queries at once
    (the row maxima detached: they cancel in the ratio)."""
    acc = accumulation_dtype(q.dtype)
    log = exp_log_features(q.to(acc), rows.to(acc) * scale)
    if shift is not None:
        log = log + shift.to(acc)
    features = torch.exp(log - log.detach().amax(dim=-1, keepdim=True))
    denominator = torch.matmul(features, normalizer.to(acc).transpose(-2, -1))
    return (torch.matmul(features, kv.to(acc)) * safe_reciprocal(denominator, eps)).to(q.dtype)


def keeps_no_features(recompute_features: bool) -> bool:
    """Whether a readout keeps no query features for backward: when asked to recompute them, and
    when no graph is being recorded (inference: inside a Function's forward
    ``ctx.needs_input_grad`` still says True for inputs that require a gradient, so without
    this a ``no_grad`` call would write an unused ``(B, H, L, M')`` tensor)."""
    return recompute_features or not torch.is_grad_enabled()


def _block_size(block_size: int | None, batch_heads: int, feature_dim: int) -> int:
    # A block size < 1 would leave the block loops empty and return uninitialised memory.
    check_positive_int("block_size", block_size, optional=True)
    return default_block_size(batch_heads, feature_dim) if block_size is None else block_size


def exp_key_summary(
    k: Tensor,
    v: Tensor,
    form: ExpForm,
    *,
    scale: float,
    key_padding_mask: Tensor | None = None,
    block_size: int | None = None,
    per_feature: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """The key summary of bidirectional attention with features ``exp(P(√s·x) - a·s‖x‖²/2 - c)``.

    Args:
        k: ``(B, H, Lk, D)``; v: ``(B, H, Lk, Dv)``.
        form: the map (``P`` ``(M', D)`` differentiable).
        scale: ``√s``, the factor applied to ``k``.
        key_padding_mask: ``(B, Lk)`` bool, True marks a padded key.
        block_size: keys per block (default :func:`default_block_size`).
        per_feature: one offset per feature instead of one per (batch, head): every feature's
            largest key term is then 1, so no feature underflows next to a larger one. Give the
            offsets to :func:`exp_query_readout` as ``key_offsets`` (exact: the product of a
            query and a key feature is unchanged).

    Returns:
        ``(kv (B, H, M', Dv), normalizer (B, H, M'), log_offset)``: ``Σ_j φ(k_j)v_jᵀ`` and
        ``Σ_j φ(k_j)`` divided by ``exp(log_offset)``, the largest key log-feature, ``(B, H)``
        (or ``(B, H, M')`` per feature, dividing the rows of ``kv`` and ``normalizer``), in
        :class:`~performers.ops.state.FavorState` units; ``-inf`` where every key is padded, and
        the sums are zero. With one offset per (batch, head) also the final state of causal
        attention over these keys.
    """
    b, h = k.shape[:2]
    block = _block_size(block_size, b * h, form.rows.shape[0])
    pad = None if key_padding_mask is None else key_padding_mask[:, None, :, None]
    kv, normalizer, key_max = _ExpKeySummary.apply(k, v, form.rows, scale, form.norm, pad, block, per_feature)
    return kv, normalizer.squeeze(-2), key_max - form.log_const


def exp_query_readout(
    q: Tensor,
    kv: Tensor,
    normalizer: Tensor,
    form: ExpForm,
    *,
    scale: float,
    block_size: int | None = None,
    eps: float | None = None,
    key_offsets: Tensor | None = None,
    recompute_features: bool = False,
) -> Tensor:
    """``φ(Q)kv / φ(Q)z`` for row-stabilized query features of the map ``form``.

    Args:
        q: ``(B, H, Lq, D)``.
        kv: ``(B, H, M', Dv)`` and normalizer: ``(B, H, M')``, a key summary (any common unit:
            it cancels), e.g. from :func:`exp_key_summary`.
        form, scale, block_size: as in :func:`exp_key_summary`.
        eps: denominator guard (default: the dtype's smallest normal number).
        key_offsets: ``(B, H, M')`` per-feature offsets of the summary (``exp_key_summary(...,
            per_feature=True)``), added to the query log-features; then the largest term of
            every query row is exactly 1 and no row underflows to zero. ``-inf`` (a feature of
            padded keys only) counts as 0.
        recompute_features: backward recomputes the query features (a matmul and an exp per
            block) instead of keeping the ``(B, H, Lq, M')`` tensor: less memory, more time.

    Returns:
        ``(B, H, Lq, Dv)``.
    """
    b, h = q.shape[:2]
    block = _block_size(block_size, b * h, form.rows.shape[0])
    eps = torch.finfo(q.dtype).tiny if eps is None else eps
    shift = None
    if key_offsets is not None:
        # (The map's constant c is a common factor of every feature: it cancels.)
        shift = torch.nan_to_num(key_offsets.detach(), neginf=0.0).unsqueeze(-2)
    return _ExpQueryReadout.apply(
        q,
        form.rows,
        kv,
        normalizer.unsqueeze(-2),
        scale,
        block,
        eps,
        shift,
        keeps_no_features(recompute_features),
    )


def fused_bidirectional_exp_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    form: ExpForm,
    *,
    scale: float,
    key_padding_mask: Tensor | None = None,
    block_size: int | None = None,
    eps: float | None = None,
    recompute_features: bool = False,
) -> Tensor:
    """Bidirectional FAVOR attention with features ``exp(P(√s·x) - a·s‖x‖²/2 - c)``:
    :func:`exp_key_summary` then :func:`exp_query_readout`.

    Args:
        q: ``(B, H, Lq, D)``; k: ``(B, H, Lk, D)``; v: ``(B, H, Lk, Dv)``.
        form: the map: ``P`` ``(M', D)`` (``W`` or ``[W; -W]``; differentiable), ``a`` and ``c``
            (``c`` cancels and is not used).
        scale: ``√s``, the factor applied to ``q`` and ``k``.
        key_padding_mask: ``(B, Lk)`` bool, True marks a padded key.
        block_size: positions per block, an int >= 1 (default :func:`default_block_size`).
        eps: denominator guard (default: the dtype's smallest normal number).
        recompute_features: see :func:`exp_query_readout` (key features are always recomputed).

    Returns:
        ``(B, H, Lq, Dv)``.
    """
    # Per-feature key maxima moved to the query side: at large logits one maximum per head
    # would underflow whole query rows to zero in float32 (every feature the row weighs is
    # tiny next to the largest key log-feature elsewhere).
    kv, normalizer, offsets = exp_key_summary(
        k, v, form, scale=scale, key_padding_mask=key_padding_mask, block_size=block_size, per_feature=True
    )
    return exp_query_readout(
        q, kv, normalizer, form, scale=scale, block_size=block_size, eps=eps, key_offsets=offsets,
        recompute_features=recompute_features,
    )  # fmt: skip
