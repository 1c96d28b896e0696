"""Pure tensor functions: projections, feature maps, linear attention, exact references."""

from performers.ops.attention import favor_attention, favor_attention_step, linear_attention
from performers.ops.causal import FavorState, causal_linear_attention, causal_linear_attention_step
from performers.ops.exact import exact_attention, kernel_attention, softmax_kernel
from performers.ops.features import (
    KERNELS,
    FeatureMapOutput,
    Kernel,
    feature_map,
    generalized_features,
    get_kernel,
    hyperbolic_softmax_features,
    positive_softmax_features,
    register_kernel,
    stabilize_keys,
    stabilize_queries,
    trigonometric_softmax_features,
)
from performers.ops.projections import gaussian_projection, make_projection, orthogonal_projection

__all__ = [
    "KERNELS",
    "FavorState",
    "FeatureMapOutput",
    "Kernel",
    "causal_linear_attention",
    "causal_linear_attention_step",
    "exact_attention",
    "favor_attention",
    "favor_attention_step",
    "feature_map",
    "gaussian_projection",
    "generalized_features",
    "get_kernel",
    "hyperbolic_softmax_features",
    "kernel_attention",
    "linear_attention",
    "make_projection",
    "orthogonal_projection",
    "positive_softmax_features",
    "register_kernel",
    "softmax_kernel",
    "stabilize_keys",
    "stabilize_queries",
    "trigonometric_softmax_features",
]
