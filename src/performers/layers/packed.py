"""Packed sequences: several sequences laid end to end in one row, attending only within themselves.

A packed batch is one row ``(1, H, T, D)`` holding ``N`` sequences back to back, described by
``cu_seqlens`` — int ``(N + 1,)``, ``0 = c₀ < c₁ < … < c_N = T``, sequence ``i`` spanning
positions ``cᵢ … cᵢ₊₁ − 1`` (the convention of varlen flash attention and of Hugging Face's
``DataCollatorWithFlattening``). Attention never crosses a boundary: the result equals running
every sequence alone and concatenating the outputs.

The layers reach packed attention through the functions here only:

* :func:`packed_favor_attention` — FAVOR attention per sequence;
* :func:`packed_sdpa_attention` — exact softmax attention per sequence (the twin FAVOR+ is
  compared with, so that comparison sees the same boundaries);
* :func:`packed_local_attention` — sliding-window attention per sequence.

FAVOR attention is one call of :func:`performers.ops.favor_attention` with ``cu_seqlens``;
exact and local attention loop over the sequences (``N`` calls on slices), which keeps exact
attention's memory at ``O(Σ Lᵢ²)`` (not the ``O(T²)`` of a block-diagonal mask).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import Tensor

from performers.layers.local import local_attention
from performers.layers.sdpa import sdpa_attention
from performers.ops import favor_attention
from performers.ops.checks import packed_boundaries

__all__ = [
    "check_cu_seqlens",
    "cu_seqlens_from_position_ids",
    "packed_favor_attention",
    "packed_local_attention",
    "packed_position_ids",
    "packed_sdpa_attention",
]


def check_cu_seqlens(cu_seqlens: Tensor, total: int, name: str = "cu_seqlens") -> None:
    """Raise unless ``cu_seqlens`` is an int ``(N + 1,)`` tensor rising strictly from 0 to ``total``
    (:func:`performers.ops.checks.packed_boundaries`, the ops' own check)."""
    packed_boundaries(cu_seqlens, total, name)


def cu_seqlens_from_position_ids(position_ids: Tensor) -> Tensor | None:
    """``cu_seqlens`` of one packed row whose ``position_ids`` ``(1, T)`` restart at 0 per sequence.

    Returns None when the positions never fall back (no packing: one sequence, or positions
    that merely start late). Falling back anywhere but to 0, or a step other than ``+1`` or a
    restart, is a ``ValueError``: such positions describe no packing (as Hugging Face's
    flattening collator writes them, every sequence counts ``0, 1, 2, …``).
    """
    if position_ids.dim() != 2 or position_ids.shape[0] != 1:
        raise ValueError(
            f"packed position_ids must have shape (1, T) (one packed row), got {tuple(position_ids.shape)}"
        )
    pos = position_ids[0]
    step = pos[1:] - pos[:-1]
    restarts = step != 1
    if not bool(restarts.any()):
        return None
    if int(pos[0]) != 0 or not bool((pos[1:][restarts] == 0).all()):
        raise ValueError(
            "position_ids fall back but do not describe packed sequences: each sequence must "
            f"count 0, 1, 2, ... from the row's first position, got {pos[:16].tolist()}"
        )
    starts = torch.nonzero(pos == 0).flatten()
    end = torch.tensor([pos.numel()], device=pos.device, dtype=starts.dtype)
    return torch.cat([starts, end]).to(torch.int32)


def packed_position_ids(cu_seqlens: Tensor, total: int) -> Tensor:
    """Positions ``(1, T)`` counting ``0, 1, …`` within each sequence of ``cu_seqlens``."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    starts = torch.repeat_interleave(cu_seqlens[:-1].long(), lengths.long(), output_size=total)
    return (torch.arange(total, device=cu_seqlens.device) - starts)[None]


def _check_packed(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor) -> list[int]:
    if q.dim() != 4 or q.shape[0] != 1 or k.shape[:1] != (1,) or v.shape[:1] != (1,):
        raise ValueError(
            "packed attention takes one packed row: q, k, v of shape (1, H, T, D), "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if not q.shape[2] == k.shape[2] == v.shape[2]:
        raise ValueError(
            f"packed attention is self-attention: q, k, v need one length T, got "
            f"{q.shape[2]}, {k.shape[2]}, {v.shape[2]}"
        )
    return list(packed_boundaries(cu_seqlens, q.shape[2]))


def _per_sequence(
    attend: Callable[[Tensor, Tensor, Tensor], Tensor], q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor
) -> Tensor:
    offsets = _check_packed(q, k, v, cu_seqlens)
    if len(offsets) == 2:
        return attend(q, k, v)
    # split, not a slice per sequence: a slice's backward fills a zero tensor of the whole row
    # per sequence; split's backward is one concatenation.
    sizes = [b - a for a, b in itertools.pairwise(offsets)]
    pieces = zip(*(t.split(sizes, dim=2) for t in (q, k, v)), strict=True)
    return torch.cat([attend(q_, k_, v_) for q_, k_, v_ in pieces], dim=2)


def packed_favor_attention(
    q: Tensor, k: Tensor, v: Tensor, projection: Tensor | None, cu_seqlens: Tensor, **options
) -> Tensor:
    """FAVOR attention of packed sequences: :func:`performers.ops.favor_attention` on each one.

    Args:
        q, k, v: ``(1, H, T, D)`` (``v`` ``(1, H, T, Dv)``), the sequences end to end.
        projection: the ``(M, D)`` projection (or None), as for ``favor_attention``.
        cu_seqlens: int ``(N + 1,)``, 0 first and ``T`` last (see the module docstring).
        options: keywords of ``favor_attention`` (``is_causal``, ``kernel``, ``scale``, ...);
            not ``key_padding_mask``, ``attn_mask``, ``initial_state`` or ``return_state``:
            each sequence starts from nothing and has no padding.

    Returns:
        ``(1, H, T, Dv)``, equal to each sequence attended alone.

    One call of the op with ``cu_seqlens`` (how each path serves packed input:
    :func:`performers.ops.favor_attention`).
    """
    for name in ("key_padding_mask", "attn_mask", "initial_state", "return_state"):
        value = options.get(name)
        if value is not None and value is not False:
            raise ValueError(f"packed FAVOR attention takes no {name}: packed sequences have none")
    return favor_attention(q, k, v, projection, cu_seqlens=cu_seqlens, **options)


def packed_sdpa_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens: Tensor,
    *,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> Tensor:
    """Exact softmax attention of packed sequences (the block-diagonal mask, one SDPA call per
    sequence so memory stays ``O(Σ Lᵢ²)``); shapes as in :func:`packed_favor_attention`."""
    return _per_sequence(
        lambda q_, k_, v_: sdpa_attention(q_, k_, v_, is_causal=is_causal, dropout_p=dropout_p, scale=scale),
        q,
        k,
        v,
        cu_seqlens,
    )


def packed_local_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens: Tensor,
    *,
    window: int,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> Tensor:
    """Sliding-window attention of packed sequences, each sequence alone (see
    :func:`performers.layers.local.local_attention`)."""
    return _per_sequence(
        lambda q_, k_, v_: local_attention(
            q_, k_, v_, window=window, is_causal=is_causal, dropout_p=dropout_p, scale=scale
        ),
        q,
        k,
        v,
        cu_seqlens,
    )
