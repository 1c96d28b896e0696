r"""Numeric helpers shared by the quadratic references and the fast paths.

Both sides import from here (never from each other), so a reference cannot silently share a
bug with the code it checks through a helper of that code.

* :func:`guarded_divide` / :func:`safe_reciprocal`: the normalization ``num / den`` with a
  denominator guard (a query that sees no key gets 0, with finite gradients).
* :func:`with_ones`: values augmented with a column of ones (numerator and denominator of
  normalized attention in one product).
* :func:`key_offsets`: the key stabilizer offsets (bidirectional maximum, causal running
  maximum; the design and why it is exact: :mod:`performers.ops.features`).
* :func:`chunk_rescale_factors`: how the chunked causal algorithm moves keys and states between
  the offsets of different positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "chunk_rescale_factors",
    "guarded_divide",
    "key_offsets",
    "packed_key_offsets",
    "safe_reciprocal",
    "segment_cummax",
    "state_carry_factors",
    "with_ones",
]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Where sums over positions accumulate: float32 for float16/bfloat16 inputs (whose products
    run in their own dtype), the inputs' dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def safe_reciprocal(denominator: Tensor, eps: float | None = None) -> Tensor:
    """``1 / denominator`` where ``|denominator| >= eps``, else 0 (see :func:`guarded_divide`)."""
    if eps is None:
        eps = torch.finfo(denominator.dtype).tiny
    small = denominator.abs() < eps
    return torch.where(small, torch.zeros_like(denominator), 1.0 / torch.where(small, 1.0, denominator))


def guarded_divide(numerator: Tensor, denominator: Tensor, eps: float | None = None) -> Tensor:
    """``numerator / denominator``, defined as 0 (with zero gradient) where ``|denominator| < eps``.

    ``numerator``: ``(..., Dv)``, ``denominator``: ``(...)``. ``eps`` defaults to the smallest
    normal number of the dtype: with nonnegative features the denominator only gets that small
    when a query sees no key at all (every key padded, or every term underflowed), and then
    the numerator is 0 too; 0 is the natural output and keeps gradients finite.
    """
    return numerator * safe_reciprocal(denominator, eps).unsqueeze(-1)


def with_ones(values: Tensor) -> Tensor:
    """``[V 1]``: ``(..., Dv)`` → ``(..., Dv+1)``, so one matmul gives numerator and denominator."""
    return torch.cat([values, values.new_ones(*values.shape[:-1], 1)], dim=-1)


def key_offsets(
    log: Tensor,
    *,
    causal: bool,
    pad: Tensor | None = None,
    start: Tensor | Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Key stabilizer offsets from key log-features ``log`` ``(B, H, L, M')`` (detached inside).

    Bidirectional: the maximum over all non-padded keys and features. Causal: the running
    maximum over positions ``≤ j``, starting from ``start`` ``(B, H)`` (the offset of a state
    that precedes these keys, or ``-inf``). Bidirectionally a given ``start`` is a floor: the
    offset is ``max(start, maximum)``. ``start`` may also be a function of the maximum over
    these keys ``(B, H)`` (``-inf`` where all are padded) that returns it: context parallelism
    (:mod:`performers.distributed`) exchanges the maxima of a sequence's shards through it.
    ``pad``: ``(B, 1, L)`` bool, True = padded key.

    Returns ``(offsets (B, H, L), last)``: positions that have seen no key yet get the
    placeholder 0 (their features are zero anyway); ``last`` ``(B, H)`` is the raw running
    maximum after the last position (``-inf`` if none), to continue from.
    """
    per_position = log.detach().amax(dim=-1)
    if pad is not None:
        per_position = per_position.masked_fill(pad, -math.inf)
    if callable(start):
        start = start(per_position.amax(dim=-1))
    if causal:
        offsets = torch.cummax(per_position, dim=-1).values
    else:
        offsets = per_position.amax(dim=-1, keepdim=True).expand_as(per_position)
    if start is not None:
        offsets = torch.maximum(offsets, start[..., None])
    last = offsets[..., -1]
    return torch.where(torch.isfinite(offsets), offsets, torch.zeros_like(offsets)), last


def segment_cummax(x: Tensor, seq: Tensor) -> Tensor:
    """The running maximum of ``x`` ``(..., L)`` along its last dimension, restarting wherever the
    non-decreasing ids ``seq`` ``(L,)`` change — without a loop over segments.

    Float32 and narrower: each value's bits as an integer in the same order (a negative float's
    magnitude bits count down), lifted by ``seq · 2³²`` in int64, so that one cumulative maximum
    restarts at each segment; the low 32 bits are the exact value. Float64 values do not leave
    room for the lift: each is replaced by its rank among the ``L`` values (a sort) instead.
    Exact either way: a maximum is one of its arguments."""
    if x.dtype == torch.float64:
        return _segment_cummax_of_ranks(x, seq)
    bits = x.float().view(torch.int32).to(torch.int64)  # (float16/bfloat16: exact in float32)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits) + 2**31  # in [0, 2³²), float order
    lift = (seq - seq[0]).to(torch.int64) * 2**32
    top = torch.cummax(ordered + lift, dim=-1).values - lift - 2**31
    top = torch.where(top < 0, top ^ 0x7FFFFFFF, top)
    return top.to(torch.int32).view(torch.float32).to(x.dtype)


def _segment_cummax_of_ranks(x: Tensor, seq: Tensor) -> Tensor:
    """:func:`segment_cummax` for any dtype: each value is replaced by its rank among all ``L``
    values and lifted by ``seq · L``; the rank of the running maximum maps back to its value
    (ties resolve to equal values)."""
    length = x.shape[-1]
    ordered, order = torch.sort(x, dim=-1)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(length, device=x.device).expand_as(order))
    lift = (seq - seq[0]) * length
    top = torch.cummax(rank + lift, dim=-1).values - lift
    return ordered.gather(-1, top)


def packed_key_offsets(
    per_position: Tensor, seq: Tensor, floor: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Causal key offsets of a packed row: the running maximum of ``per_position`` ``(B, H, L)``
    (each key's largest log-feature, detached) restarting at each sequence of ``seq`` ``(L,)``,
    at least ``floor`` ``(B, H, L)`` (the offset of the state a sequence continues, or None).

    Returns ``(offsets, raw)`` as :func:`performers.ops.numerics.key_offsets` does: offsets with
    the placeholder 0 where no key was seen yet, and the raw running maxima."""
    raw = segment_cummax(per_position.detach(), seq)
    if floor is not None:
        raw = torch.maximum(raw, floor)
    return torch.where(torch.isfinite(raw), raw, torch.zeros_like(raw)), raw


def chunk_rescale_factors(
    chunk_offsets: Tensor, state_offset: Tensor, pairs: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The rescaling factors of the chunked causal algorithm with key offsets, all ``≤ 1``.

    Args:
        chunk_offsets: ``(B, H, N, C)`` key offsets ``m_j`` (non-decreasing along positions).
        state_offset: ``(B, H)`` offset of the state entering the first chunk.
        pairs: ``(N, C, C)`` bool, the (query, key) pairs of each chunk ``within`` keeps
            (default: the causal triangle ``j ≤ i``); a packed row passes the triangle's pairs
            that lie in one sequence, so that ``within`` is masked in the same pass.

    Returns:
        ``within`` ``(B, H, N, C, C)``: ``exp(m_j - m_i)`` for key ``j ≤ i`` in a chunk, 0 above
        the diagonal; ``to_end`` ``(B, H, N, C, 1)``: key ``j`` in units of its chunk's last
        offset; ``decay`` ``(B, H, N)``: the incoming state of each chunk to that offset;
        ``to_query`` ``(B, H, N, C, 1)``: the incoming state to query ``i``'s offset. Exponents are
        clamped at 0: leading padded keys carry a placeholder offset and zero features.
    """
    c = chunk_offsets.shape[-1]
    if pairs is None:
        pairs = torch.ones(c, c, dtype=torch.bool, device=chunk_offsets.device).tril()
    diff = chunk_offsets.unsqueeze(-2) - chunk_offsets.unsqueeze(-1)
    within = torch.exp(diff.clamp_max(0.0)).mul_(pairs)
    chunk_end = chunk_offsets[..., -1]
    before = torch.cat([state_offset.unsqueeze(-1), chunk_end[..., :-1]], dim=-1)
    to_end = torch.exp((chunk_offsets - chunk_end.unsqueeze(-1)).clamp_max(0.0)).unsqueeze(-1)
    decay = torch.exp((before - chunk_end).clamp_max(0.0))
    to_query = torch.exp((before.unsqueeze(-1) - chunk_offsets).clamp_max(0.0)).unsqueeze(-1)
    return within, to_end, decay, to_query


def state_carry_factors(chunk_ends: Tensor, state_offset: Tensor) -> Tensor:
    """How the chunked causal state moves through ``n`` chunks, as one matrix (all entries ``≤ 1``).

    With sources ``[s₀, S₀, …, S_{n−1}]`` — the incoming state (offset ``state_offset``) and the
    summary of each chunk (offset ``chunk_ends[i]``, its last key offset) — row ``j < n`` of
    ``factors @ sources`` is the state entering chunk ``j`` and row ``n`` the state after the
    last one, each in the units of the offset ``R_j`` it is read in, ``R = [state_offset,
    chunk_ends]``: ``factors[j, i] = exp(R_i − R_j)`` for ``i ≤ j`` (offsets never decrease),
    0 above the diagonal. One product instead of ``n`` sequential updates; a row only reads
    earlier chunks (the zeros make later ones contribute an exact 0).

    Args:
        chunk_ends: ``(B, H, n)``; state_offset: ``(B, H)``.

    Returns:
        ``(B, H, n+1, n+1)``. Exponents are clamped at 0 as in :func:`chunk_rescale_factors`.
    """
    offsets = torch.cat([state_offset.unsqueeze(-1), chunk_ends], dim=-1)
    size = offsets.shape[-1]
    lower = torch.ones(size, size, dtype=torch.bool, device=offsets.device).tril()
    factors = torch.exp((offsets.unsqueeze(-2) - offsets.unsqueeze(-1)).clamp_max(0.0)).mul_(lower)
    # The diagonal is exp(0) = 1, also for an empty incoming state of offset -inf (-inf - -inf
    # would be NaN); below it, exp(-inf - finite) = 0: an empty state contributes nothing.
    factors.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    return factors
