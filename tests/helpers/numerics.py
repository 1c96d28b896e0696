"""Numerical helpers shared by the tests: seeded generators and derived tolerances."""

import torch

# Statistical tests declare their false-alarm rate through Z: a two-sided normal tail of
# 4.5 standard errors has probability 6.8e-6, so a suite of ~50 such checks fails by chance
# with probability < 4e-4. All seeds are fixed, so a run is reproducible.
Z = 4.5


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


BF16_UNIT_ROUNDOFF = 2.0**-8  # bfloat16: 8 significand bits


def bf16_relative_bound(q: torch.Tensor, k: torch.Tensor, norm: float) -> float:
    """Error of the bfloat16 fused bidirectional path relative to the output scale, to first
    order: each rounding of a log-feature costs ≤ u·|log|, and |log| is dominated by the norm
    term a·‖x̃‖²/2 (the random part x̃·ω has mean 0 and averages over the M features of the
    normalized weights); the products, the rounded summary and the output add ~2u."""
    x_sq = max(q.float().square().sum(-1).max().item(), k.float().square().sum(-1).max().item())
    x_sq *= q.shape[-1] ** -0.5  # x̃ = x·D^(-1/4)
    return BF16_UNIT_ROUNDOFF * (2 + norm * x_sq / 2)
