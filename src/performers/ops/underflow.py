"""Detecting query rows that underflowed to zero (causal attention at large logits).

Bidirectional attention moves each feature's largest key log-feature to the query side, so the
largest term of every query row is exactly 1 and no row can underflow. Causal attention cannot:
the offset a key is stored in is the running maximum over the positions before it, and a query
whose features weigh only keys far below that maximum gets a denominator below the smallest
normal float — its output is then the guarded 0 with a zero gradient. Such rows are reported
with a :class:`FavorUnderflowWarning` (shown once per call site by Python's default warning
filter), never returned silently. (This holds for the PyTorch paths and the Triton kernels.)
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from performers.ops.state import FavorState

__all__ = ["FavorUnderflowWarning", "count_zero_rows", "warn_zero_rows"]


class FavorUnderflowWarning(RuntimeWarning):
    """Some query rows of causal FAVOR attention underflowed to an all-zero output."""


def count_zero_rows(
    out: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None = None,
    initial_state: FavorState | None = None,
    *,
    causal: bool = True,
) -> int:
    """Query rows whose output is exactly 0 although they see a key with a nonzero value.

    Args:
        out: ``(B, H, Lq, Dv)`` attention output; v: ``(B, H, Lk, Dv)`` its values.
        key_padding_mask: ``(B, Lk)`` bool, True marks a padded key (it carries no weight).
        initial_state: the state the keys continue (its keys count as seen).
        causal: query ``i`` sees keys ``≤ i`` (else every key).

    Returns:
        The number of such rows: a convex combination of values that are not all zero is only
        exactly zero when the weights underflowed.
    """
    valued = (v != 0).any(dim=-1)  # (B, H, L)
    if key_padding_mask is not None:
        valued = valued & ~key_padding_mask[:, None, :]
    seen = valued.cumsum(dim=-1) > 0 if causal else valued.any(dim=-1, keepdim=True)
    if initial_state is not None:
        seen = seen | (initial_state.kv != 0).flatten(-2).any(dim=-1)[..., None]
    return int(((out == 0).all(dim=-1) & seen).sum())


def warn_zero_rows(
    out: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None = None,
    initial_state: FavorState | None = None,
    *,
    causal: bool = True,
    stacklevel: int = 3,
) -> int:
    """:func:`count_zero_rows`, and a :class:`FavorUnderflowWarning` naming the count when it is
    not 0. Skipped (returns 0) while compiling or tracing, where it would break the graph."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or out.numel() == 0:
        return 0
    count = count_zero_rows(out.detach(), v.detach(), key_padding_mask, initial_state, causal=causal)
    if count:
        rows = out.shape[0] * out.shape[1] * out.shape[2]
        direction = "causal" if causal else "bidirectional"
        warnings.warn(
            f"{direction} FAVOR attention: {count} of {rows} query rows underflowed to an all-zero "
            f"output in {out.dtype} (query/key logits too large for the key maximum the features "
            "are stored under); scale q and k down, compute in float64, or use the PyTorch "
            "bidirectional paths",
            FavorUnderflowWarning,
            stacklevel=stacklevel,
        )
    return count
