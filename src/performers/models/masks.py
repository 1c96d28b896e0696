"""Padding masks and positions: the two mask conventions of the models, position ids that
count from each row's first real token, and the offsets of packed sequences."""

from __future__ import annotations

import torch
from torch import Tensor

from performers.layers import cu_seqlens_from_position_ids
from performers.layers.packed import check_cu_seqlens

__all__ = ["padding_from_masks", "position_ids_from_padding", "resolve_cu_seqlens"]


def resolve_cu_seqlens(
    cu_seqlens: Tensor | None,
    position_ids: Tensor | None,
    batch: int,
    length: int,
    *,
    padded: bool = False,
    decoding: bool = False,
    sharded: bool = False,
) -> Tensor | None:
    """The offsets of packed sequences in a call, or None when the call is not packed.

    Given ``cu_seqlens`` are checked; without them, one row (``batch == 1``) whose
    ``position_ids`` restart at 0 is packed, as Hugging Face's ``DataCollatorWithFlattening``
    describes packing (only without padding, cache and context parallelism, where positions
    may fall back for other reasons). Packing with any of those is a ``ValueError``.
    """
    if cu_seqlens is None:
        if position_ids is None or batch != 1 or padded or decoding or sharded:
            return None
        if tuple(position_ids.shape) != (1, length):
            return None  # the embedding reports the shape error
        return cu_seqlens_from_position_ids(position_ids)
    if batch != 1:
        raise ValueError(
            f"cu_seqlens describes one packed row: input_ids of shape (1, T), got batch size {batch} "
            "(lay the sequences end to end in one row)"
        )
    others = {"a padding mask": padded, "past_key_values / use_cache": decoding, "context_group": sharded}
    given = [name for name, present in others.items() if present]
    if given:
        raise ValueError(f"cu_seqlens (packed sequences) cannot be combined with {', '.join(given)}")
    check_cu_seqlens(cu_seqlens, length)
    return cu_seqlens


def position_ids_from_padding(key_padding_mask: Tensor) -> Tensor:
    """Positions ``(B, L)`` counted from each row's first real token (padding gets 0 or the last position).

    ``key_padding_mask``: ``(B, L)`` bool, True = padding. With left padding ``[p, p, a, b]``
    gives ``[0, 0, 0, 1]``, the positions ``a, b`` have without padding; with right padding the
    real tokens get ``0, 1, ...`` as well.
    """
    real = (~key_padding_mask).long()
    return (real.cumsum(dim=-1) - 1).clamp(min=0)


def padding_from_masks(
    attention_mask: Tensor | None, key_padding_mask: Tensor | None, batch: int, length: int
) -> Tensor | None:
    """The ``(B, L)`` bool padding mask (True = pad) from either convention, or None."""
    if attention_mask is not None and key_padding_mask is not None:
        raise ValueError("pass attention_mask (1 = token) or key_padding_mask (True = pad), not both")
    if attention_mask is not None:
        if tuple(attention_mask.shape) != (batch, length):
            raise ValueError(
                f"attention_mask must have shape (B, L) = ({batch}, {length}), "
                f"got {tuple(attention_mask.shape)}"
            )
        return attention_mask == 0
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool:
            raise TypeError(
                f"key_padding_mask must be a bool tensor (True = pad), got {key_padding_mask.dtype}"
            )
        if tuple(key_padding_mask.shape) != (batch, length):
            raise ValueError(
                f"key_padding_mask must have shape (B, L) = ({batch}, {length}), "
                f"got {tuple(key_padding_mask.shape)}"
            )
    return key_padding_mask
