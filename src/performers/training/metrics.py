"""Rank statistics for evaluation (sequence-level regression, sentence similarity)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ranks", "spearman"]


def ranks(x: Tensor) -> Tensor:
    """Ranks 1..N with ties given their average rank."""
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    out = torch.empty_like(x, dtype=torch.float64)
    n, i = len(x), 0
    while i < n:
        j = i
        while j + 1 < n and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        out[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman's rank correlation (Pearson correlation of average ranks)."""
    rx, ry = ranks(x.double()), ranks(y.double())
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()))
