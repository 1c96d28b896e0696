"""Masks of the ``"favor"`` attention for Hugging Face ``transformers``: key padding only.

:func:`favor_mask` is the ``"favor"`` entry of HF's ``AttentionMaskInterface`` (it never builds
an ``L×L`` tensor); :func:`key_padding` turns whatever mask a model passes to the attention
function into a ``(B, Lk)`` key-padding mask, or says why it cannot.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers.masking_utils import bidirectional_mask_function, causal_mask_function

__all__ = ["favor_mask", "key_padding"]


def favor_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: Any = causal_mask_function,
    attention_mask: Tensor | None = None,
    **kwargs: Any,
) -> Tensor | None:
    """The ``"favor"`` entry of ``AttentionMaskInterface``: a key-padding mask, never ``L×L``.

    Args:
        batch_size, q_length, kv_length, q_offset, kv_offset: sizes as computed by HF's
            ``create_causal_mask`` / ``create_bidirectional_mask``.
        mask_function: must be HF's plain ``causal_mask_function`` or
            ``bidirectional_mask_function``; causality itself is applied by the attention
            function from ``module.is_causal``.
        attention_mask: the 2D padding mask ``(B, seen + q_length)``, True/1 = attend.

    Returns:
        ``None`` when no key is padded, else ``(B, kv_length)`` bool (True = attend).

    Raises:
        ValueError: for a pattern FAVOR+ cannot represent (sliding window, chunked, packed
            sequences, custom overlays), a static cache (more key slots than tokens), or a
            causal mask shorter than the cached plus new positions (inputs that do not continue
            the cache).
    """
    if mask_function is not causal_mask_function and mask_function is not bidirectional_mask_function:
        raise ValueError(
            "the 'favor' attention supports only plain causal or bidirectional attention with key padding; "
            "this model asked for another mask pattern "
            f"({getattr(mask_function, '__qualname__', mask_function)}: "
            "sliding window, chunked, packed sequences or a custom overlay), which FAVOR+ cannot represent"
        )
    if (
        isinstance(q_offset, int)
        and isinstance(kv_offset, int)
        and kv_offset + kv_length > q_offset + q_length
    ):
        if mask_function is causal_mask_function:
            raise ValueError(
                "the 'favor' attention cannot use a static (preallocated) cache; "
                "pass cache=FavorCache() to generate() or forward()"
            )
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2:
        raise ValueError(f"expected a 2D padding mask (B, L), got shape {tuple(attention_mask.shape)}")
    keep = attention_mask.to(torch.bool)
    if keep.shape[-1] < kv_offset + kv_length:
        if mask_function is causal_mask_function:
            # A decoder's mask covers the cached positions and the new ones; a shorter one means
            # the inputs do not continue what the cache has seen (e.g. a cache reused for a new
            # prompt), which padding would silently turn into masked-out new tokens.
            seen = kv_offset + kv_length - q_length
            raise ValueError(
                f"attention_mask covers {keep.shape[-1]} positions, but the cache has seen {seen} and this "
                f"call adds {q_length}: the inputs must continue the cached sequence (a cache serves one "
                "generation: pass a new FavorCache() for a new prompt)"
            )
        keep = nn.functional.pad(keep, (0, kv_offset + kv_length - keep.shape[-1]), value=False)
    keep = keep[:, kv_offset : kv_offset + kv_length]
    if bool(keep.all()):
        return None
    return keep


def padding_from_4d(mask: Tensor, causal: bool, q_len: int, k_len: int) -> Tensor | None:
    """Key padding ``(B, Lk)`` (True = padded) of a 4D mask, or ValueError if it is not one."""
    if mask.shape[1] != 1 or mask.shape[-2:] != (q_len, k_len):
        raise ValueError(
            f"a 4D attention_mask must have shape (B, 1, Lq, Lk) = (B, 1, {q_len}, {k_len}), "
            f"got {tuple(mask.shape)}"
        )
    if mask.dtype == torch.bool:
        keep = mask[:, 0]
    else:
        if not mask.is_floating_point():
            keep = mask[:, 0] != 0
        else:
            values = mask[:, 0]
            keep = values == 0
            # -1e4 and below (the -1e4 / -1e9 / finfo.min conventions) remove a key exactly in
            # any float softmax: exp(-1e4) underflows to 0.
            blocked = values <= -1e4
            if not bool((keep | blocked).all()):
                raise ValueError(
                    "the 'favor' attention accepts additive 4D masks whose entries are 0 (attend) or "
                    "<= -1e4 (blocked); other values are a bias on q·k, which has no FAVOR+ equivalent"
                )
    allowed = keep.any(dim=-2)  # (B, Lk): a key some query may attend
    expected = allowed[:, None, :].expand(-1, q_len, -1)
    if causal:
        rows = torch.arange(q_len, device=mask.device)[:, None] + (k_len - q_len)
        expected = expected & (torch.arange(k_len, device=mask.device)[None, :] <= rows)
        # The row of a padded query may be empty (as HF's own masks leave it): its output is
        # never used. A padded query row that attends keys must still follow the pattern.
        free_rows = ~allowed[:, k_len - q_len :]
    else:
        free_rows = ~keep.any(-1)
    if not bool(((keep == expected).all(-1) | free_rows).all()):
        raise ValueError(
            "this 4D attention_mask is not a key-padding mask"
            + (" combined with the causal triangle" if causal else "")
            + "; the 'favor' attention can only represent key padding and causality (no L×L pattern)"
        )
    pad = ~allowed
    return pad if bool(pad.any()) else None


def key_padding(mask: Any, causal: bool, q_len: int, k_len: int, batch: int) -> Tensor | None:
    """``(B, Lk)`` bool, True = padded key, from whatever the model passed as ``attention_mask``."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise ValueError(
            f"the 'favor' attention got an attention_mask of type {type(mask).__name__}; "
            "it accepts None, a 2D key mask (B, Lk) or a 4D key-padding mask (B, 1, Lq, Lk)"
        )
    if mask.dim() == 2:
        if mask.shape[0] != batch or mask.shape[1] < k_len:
            raise ValueError(
                f"a 2D attention_mask must have shape (B, Lk) = ({batch}, {k_len}) (or cover past keys too), "
                f"got {tuple(mask.shape)}"
            )
        keep = mask[:, -k_len:]
        keep = keep if keep.dtype == torch.bool else keep != 0
        pad = ~keep
        return pad if bool(pad.any()) else None
    if mask.dim() == 4:
        pad = padding_from_4d(mask, causal, q_len, mask.shape[-1])
        if pad is None:
            return None
        if pad.shape[0] == 1 and batch > 1:
            pad = pad.expand(batch, -1)
        return pad[:, -k_len:]
    raise ValueError(f"attention_mask must be 2D (B, Lk) or 4D (B, 1, Lq, Lk), got shape {tuple(mask.shape)}")
