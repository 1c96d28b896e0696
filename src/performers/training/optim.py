"""The optimizer of every training loop here: AdamW with weight decay on matrices only."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["build_optimizer"]


def build_optimizer(
    model: nn.Module,
    *,
    learning_rate: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model`` in two groups: weight decay for
    parameters of 2 or more dimensions (linear and embedding matrices), none for vectors
    (biases, LayerNorm gains), as is usual for Transformers.

    Frozen parameters (``requires_grad=False``, e.g. a frozen encoder under a linear probe) are
    left out.
    """
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"{type(model).__name__} has no trainable parameter")
    decay = [p for _, p in trainable if p.dim() >= 2]
    no_decay = [p for _, p in trainable if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate,
        betas=betas,
        eps=eps,
    )
