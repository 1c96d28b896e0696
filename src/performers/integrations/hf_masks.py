"""Masks of the ``"favor"`` attention for Hugging Face ``transformers``: key padding or packing.

:func:`favor_mask` is the ``"favor"`` entry of HF's ``AttentionMaskInterface`` (it never builds
an ``L×L`` tensor); :func:`key_padding` turns whatever mask a model passes to the attention
function into a ``(B, Lk)`` key-padding mask, or says why it cannot. A packed batch (one row of
sequences whose ``position_ids`` restart, e.g. from ``DataCollatorWithFlattening``) becomes a
:class:`PackedMask` holding the ``cu_seqlens`` of its sequences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers.masking_utils import bidirectional_mask_function, causal_mask_function

__all__ = ["PackedMask", "favor_mask", "key_padding", "packed_cu_seqlens"]


@dataclass(frozen=True)
class PackedMask:
    """The ``"favor"`` mask of a packed batch: one row holding sequences back to back.

    ``cu_seqlens``: int64 ``(N + 1,)``, from 0 to the row's length (the convention of
    :func:`performers.favor_attention`); each sequence attends only within itself (causally in a
    decoder). Made by :func:`favor_mask` from the pattern HF builds for restarting
    ``position_ids`` (no ``L×L`` tensor is ever made).
    """

    cu_seqlens: Tensor


def _closure(function: Any) -> dict[str, Any]:
    code = getattr(function, "__code__", None)
    cells = getattr(function, "__closure__", None) or ()
    if code is None:
        return {}
    return dict(zip(code.co_freevars, (cell.cell_contents for cell in cells), strict=False))


def _packed_segments(mask_function: Any) -> Tensor | None:
    """HF's segment ids ``(B, L)`` if ``mask_function`` is exactly its packed-sequence pattern.

    For ``position_ids`` that restart (and no padding mask, no cache) transformers builds
    ``and_masks(remap_positions_for_packed_sequence(base, position_ids),
    packed_sequence_mask_function(segments))`` with ``base`` the plain causal or bidirectional
    function: block-causal / block-diagonal attention, sequence ``s`` being the positions whose
    segment id is ``s`` (a new one wherever a position is not its predecessor + 1, so positions
    inside a sequence rise by 1 and remapped causality is causality). Anything else is None.
    """
    if getattr(mask_function, "__qualname__", "") != "and_masks.<locals>.and_mask":
        return None
    parts = _closure(mask_function).get("mask_functions")
    if not isinstance(parts, tuple) or len(parts) != 2:
        return None
    remap, packed = parts
    if getattr(remap, "__qualname__", "") != "remap_positions_for_packed_sequence.<locals>.inner_mask":
        return None
    if getattr(packed, "__qualname__", "") != "packed_sequence_mask_function.<locals>.inner_mask":
        return None
    base = _closure(remap).get("mask_function")
    if base is not causal_mask_function and base is not bidirectional_mask_function:
        return None
    segments = _closure(packed).get("packed_sequence_mask")
    return segments if isinstance(segments, Tensor) and segments.dim() == 2 else None


def packed_cu_seqlens(segments: Tensor) -> Tensor:
    """``cu_seqlens`` ``(N + 1,)`` of one packed row of segment ids ``(1, L)`` (non-decreasing).

    Raises:
        ValueError: more than one row (FAVOR+ packs one row; flatten the batch into one, as
            ``DataCollatorWithFlattening`` does).
    """
    if segments.shape[0] != 1:
        raise ValueError(
            f"the 'favor' attention runs packed sequences in one row (batch size 1), got {segments.shape[0]} "
            "packed rows; put every sequence in a single row (DataCollatorWithFlattening does)"
        )
    row = segments[0]
    starts = torch.nonzero(row[1:] != row[:-1]).flatten() + 1
    zero = torch.zeros(1, dtype=torch.int64, device=row.device)
    end = torch.full((1,), row.numel(), dtype=torch.int64, device=row.device)
    return torch.cat([zero, starts.to(torch.int64), end])


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
        ``None`` when no key is padded, else ``(B, kv_length)`` bool (True = attend); a
        :class:`PackedMask` for HF's packed-sequence pattern (one row, no cache).

    Raises:
        ValueError: for a pattern FAVOR+ cannot represent (sliding window, chunked, blockwise,
            custom overlays), packed sequences in several rows or with a cache, a static cache
            (more key slots than tokens), or a causal mask shorter than the cached plus new
            positions (inputs that do not continue the cache).
    """
    segments = _packed_segments(mask_function)
    if segments is not None:
        return _packed_mask(segments, q_length, kv_length, q_offset, kv_offset, attention_mask)
    if mask_function is not causal_mask_function and mask_function is not bidirectional_mask_function:
        raise ValueError(
            "the 'favor' attention supports only plain causal or bidirectional attention with key padding; "
            "this model asked for another mask pattern "
            f"({getattr(mask_function, '__qualname__', mask_function)}: "
            "sliding window, chunked, blockwise or a custom overlay), which FAVOR+ cannot represent"
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


def _packed_mask(
    segments: Tensor, q_length: int, kv_length: int, q_offset: Any, kv_offset: Any, attention_mask: Any
) -> PackedMask:
    """The :class:`PackedMask` of HF's packed pattern, after checking it is the self-attention of
    the row with nothing else (HF detects packing only then; the checks say so if that changes)."""
    if attention_mask is not None:
        raise ValueError(
            "the 'favor' attention cannot combine packed sequences with a padding attention_mask"
        )
    if not (isinstance(q_offset, int) and isinstance(kv_offset, int)) or q_offset or kv_offset:
        raise ValueError("the 'favor' attention cannot run packed sequences with a cache (use_cache=False)")
    if q_length != kv_length or segments.shape[-1] != q_length:
        raise ValueError(
            f"packed sequences need as many keys as queries, got {q_length} queries, {kv_length} keys"
        )
    return PackedMask(packed_cu_seqlens(segments))


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
