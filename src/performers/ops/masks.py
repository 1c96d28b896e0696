"""The SDPA-style keywords of the attention entry points: ``is_causal`` (and its older spelling
``causal``), a boolean ``attn_mask`` factored into key padding (and causality), ``dropout_p``.

FAVOR+ never forms the ``Lq × Lk`` attention weights, so it can apply exactly the masks that
factor through its sums: key padding (a key leaves every query's numerator and denominator)
and the causal prefix. :func:`mask_key_padding` takes a mask in the convention of
``F.scaled_dot_product_attention`` (bool, True = the query attends the key, broadcast to
``(B, H, Lq, Lk)``) and returns that factorization, or says why there is none.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from performers.ops.checks import shape_str

__all__ = ["check_dropout", "mask_key_padding", "resolve_is_causal"]


def resolve_is_causal(is_causal: bool, causal: bool | None, *, deprecated_in: str | None = None) -> bool:
    """``is_causal``, or ``causal`` (its older spelling) when given; both at once is a TypeError.

    ``is_causal=False`` is the default and cannot be told from an explicit False, so only
    ``causal=...`` together with ``is_causal=True`` is detected as "both". ``deprecated_in``
    names a callable whose ``causal`` is deprecated (the layers): a DeprecationWarning then says
    so. (The functions of :mod:`performers.ops` keep ``causal`` as a plain alias.)"""
    if causal is None:
        return bool(is_causal)
    if is_causal:
        raise TypeError("pass is_causal (SDPA's keyword) or its older spelling causal, not both")
    if deprecated_in is not None:
        warnings.warn(
            f"{deprecated_in}(causal=...) is deprecated: pass is_causal=... (the keyword of "
            "F.scaled_dot_product_attention)",
            DeprecationWarning,
            stacklevel=3,
        )
    return bool(causal)


def check_dropout(dropout_p: float) -> None:
    """SDPA's ``dropout_p`` is accepted as 0 only: FAVOR+ forms no attention weights to drop."""
    if dropout_p != 0:
        raise ValueError(
            f"dropout_p must be 0 for FAVOR attention (it forms no attention weights to drop), "
            f"got {dropout_p!r}"
        )


def mask_key_padding(
    attn_mask: Tensor, *, batch: int, heads: int, q_len: int, k_len: int
) -> tuple[Tensor, bool]:
    """Factor an SDPA boolean ``attn_mask`` into key padding and causality.

    Args:
        attn_mask: bool, True = the query attends the key (SDPA's convention), of a shape that
            broadcasts to ``(B, H, Lq, Lk)`` as in SDPA: e.g. ``(B, 1, 1, Lk)`` (key padding),
            ``(B, 1, Lq, Lk)``, ``(Lq, Lk)``.
        batch, heads, q_len, k_len: ``B``, ``H``, ``Lq``, ``Lk`` of the call.

    Returns:
        ``(key_padding_mask, causal)``: ``(B, Lk)`` bool with True = padded key (the
        ``key_padding_mask`` convention), and whether the mask is key padding combined with the
        causal lower triangle (query ``i`` sees keys ``j ≤ i``; needs ``Lq == Lk``).

    Raises:
        TypeError: a mask that is not a bool tensor (additive float masks are biases on ``q·k``,
            which FAVOR+ cannot apply).
        ValueError: a mask that does not broadcast to ``(B, H, Lq, Lk)``, differs between heads,
            or is neither key padding nor key padding with the causal triangle.
    """
    if not isinstance(attn_mask, Tensor):
        raise TypeError(f"attn_mask must be a torch.Tensor, got {type(attn_mask).__name__}")
    if attn_mask.dtype != torch.bool:
        raise TypeError(
            f"attn_mask must be a bool tensor (True = the query attends the key, SDPA's convention), got "
            f"{attn_mask.dtype}: a float mask is added to q·k, which FAVOR+ cannot do (it never forms "
            "the attention weights); pass key padding or causal masks as bool"
        )
    target = (batch, heads, q_len, k_len)
    if attn_mask.dim() > 4 or any(
        size not in (1, want) for size, want in zip(reversed(attn_mask.shape), reversed(target), strict=False)
    ):
        raise ValueError(
            f"attn_mask must broadcast to (B, H, Lq, Lk) = {target} as in F.scaled_dot_product_attention, "
            f"got {shape_str(attn_mask)}"
        )
    mask = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
    if mask.shape[1] > 1 and not bool((mask == mask[:, :1]).all()):
        raise ValueError(
            f"attn_mask {shape_str(attn_mask)} differs between heads; FAVOR+ takes one key-padding mask "
            "per sequence, shared by the heads"
        )
    mask = mask[:, 0]  # (B or 1, Lq or 1, Lk or 1)
    if mask.shape[1] == 0:  # no query: nothing attends, nothing to factor
        return torch.zeros(batch, k_len, dtype=torch.bool, device=mask.device), False
    # The last query row: every key it may attend. Under the causal triangle with Lq == Lk the
    # last query sees every earlier key, so this row is the key-padding pattern either way.
    keep = mask[:, -1:, :]
    causal = False
    if not bool((mask == keep).all()):
        triangle = torch.ones(q_len, k_len, dtype=torch.bool, device=mask.device).tril()
        if q_len != k_len or not bool((mask == (keep & triangle)).all()):
            raise ValueError(
                f"attn_mask {shape_str(attn_mask)} is neither key padding (one row of keys for every "
                "query) nor key padding with the causal lower triangle"
                + ("" if q_len == k_len else f" (which needs Lq == Lk, got {q_len} and {k_len})")
                + "; FAVOR+ can apply only these two (it never forms the attention weights)"
            )
        causal = True
    padding = ~keep[:, 0, :].expand(batch, k_len)
    return padding, causal
