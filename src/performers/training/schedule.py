"""The learning-rate schedule of every training loop here (training, fine-tuning, distillation):
linear warm-up, then cosine decay to 0 or a constant rate."""

from __future__ import annotations

import math
from functools import partial

import torch

__all__ = ["SCHEDULES", "lr_factor", "make_scheduler"]

SCHEDULES = ("cosine", "constant")


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, schedule: str = "cosine") -> float:
    """The multiplier of the peak learning rate for optimizer step ``step`` (0-based).

    ``(step + 1) / warmup_steps`` during warm-up; then ``1`` (``"constant"``) or
    ``(1 + cos(π·p)) / 2`` (``"cosine"``) with ``p`` the fraction of the post-warm-up steps done
    (clamped at 1, so steps past ``total_steps`` stay at 0).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, schedule: str = "cosine"
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`lr_factor`; its ``state_dict`` goes into checkpoints."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    factor = partial(lr_factor, warmup_steps=warmup_steps, total_steps=total_steps, schedule=schedule)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
