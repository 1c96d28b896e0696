"""Padding masks and positions: the two mask conventions of the models, and position ids that
count from each row's first real token."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["padding_from_masks", "position_ids_from_padding"]


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
