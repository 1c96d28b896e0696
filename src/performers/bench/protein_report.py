"""What the protein benchmarks' reports share (``performers bench proteins-table``,
``proteins-long``, ``proteins-precision``, ``proteins-backcompat``, ``packing``): percentages and the model's
sizes in words."""

from __future__ import annotations

from performers.models import PerformerConfig

__all__ = ["model_sizes", "percent"]


def percent(x: float) -> str:
    """``x`` (a fraction) as a percentage with two decimals."""
    return f"{100 * x:.2f}"


def model_sizes(config: PerformerConfig) -> str:
    """Width, depth, heads, feed-forward width and feature count of ``config``, in words."""
    return (
        f"d_model {config.d_model}, {config.num_layers} layers, {config.num_heads} heads, "
        f"d_ff {config.d_ff}, M = {config.favor.num_features}"
    )
