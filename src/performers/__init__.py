"""performers: linear-time Transformers with FAVOR+ random-feature attention."""

from performers.ops import (
    KERNELS,
    FavorState,
    exact_attention,
    favor_attention,
    favor_attention_step,
    feature_map,
    gaussian_projection,
    get_kernel,
    linear_attention,
    make_projection,
    orthogonal_projection,
)

__version__ = "0.1.0"

__all__ = [
    "KERNELS",
    "FavorState",
    "exact_attention",
    "favor_attention",
    "favor_attention_step",
    "feature_map",
    "gaussian_projection",
    "get_kernel",
    "linear_attention",
    "make_projection",
    "orthogonal_projection",
]
