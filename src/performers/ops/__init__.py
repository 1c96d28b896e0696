"""Pure tensor functions: projections, feature maps, FAVOR attention paths and their naive references.

Import from here (``performers.ops``); the submodules are one algorithm each:

==========================  ==================================================================
``projections``             random projections ``W`` ``(M, D)``: iid Gaussian, block-orthogonal
``features``                feature maps ``φ``, the exponential form written once, stabilizers
``favor_plus_plus``         FAVOR++ (GERF) features and their data-dependent parameter ``A``
``kernels``                 the estimator registry (``KERNELS``, ``Kernel``, ``feature_map``)
``numerics``                helpers shared by references and fast paths (guarded division,
                            stabilizer offsets, chunk rescaling)
``naive``                   quadratic references every fast path is tested against
``state``                   ``FavorState`` (the causal recurrent state), ``DEFAULT_CHUNK_SIZE``
``checks``                  input checks: typed errors naming the argument and its shape
``underflow``               query rows that underflowed to zero: counted and reported
                            (``FavorUnderflowWarning``)
``generic_features``        stabilized features of any kernel for the generic paths
``bidirectional_generic``   ``Q'(K'ᵀ[V 1])`` on materialized features
``bidirectional_fused``     exponential kernels, keys streamed in blocks, hand-written backward
``causal_generic``          chunked prefix sums with autograd (any kernel, any state)
``causal_recurrent``        one position from the recurrent state (decoding)
``causal_fused``            exponential kernels, segments of chunks, hand-written backward
``attention``               ``favor_attention`` / ``favor_attention_step`` / ``linear_attention``:
                            checks and the choice of path only
``theory``                  Lemma 2 / Theorem 2 / FAVOR++ closed forms
``triton``                  the same paths as Triton kernels for CUDA (bidirectional, chunked
                            causal, decode; exponential and generalized maps), imported lazily
==========================  ==================================================================
"""

from performers.ops import theory
from performers.ops.attention import favor_attention, favor_attention_step, linear_attention
from performers.ops.causal_generic import causal_linear_attention
from performers.ops.causal_recurrent import causal_linear_attention_step
from performers.ops.favor_plus_plus import (
    favor_plus_plus_from_statistics,
    favor_plus_plus_parameters,
    favor_plus_plus_statistics,
    optimal_positive_features,
    pair_mean_sq_norm,
)
from performers.ops.features import (
    ExpForm,
    FeatureMapOutput,
    exp_form,
    gaussian_hyperbolic_features,
    gaussian_positive_features,
    gaussian_trigonometric_features,
    generalized_features,
    hyperbolic_softmax_features,
    positive_softmax_features,
    stabilize_keys,
    stabilize_queries,
    trigonometric_softmax_features,
)
from performers.ops.kernels import KERNELS, Kernel, KernelLike, feature_map, get_kernel, register_kernel
from performers.ops.naive import exact_attention, kernel_attention, naive_favor_attention
from performers.ops.numerics import guarded_divide, key_offsets, safe_reciprocal
from performers.ops.projections import (
    ProjectionKind,
    RowNorms,
    gaussian_projection,
    make_projection,
    orthogonal_projection,
)
from performers.ops.state import DEFAULT_CHUNK_SIZE, FavorState
from performers.ops.underflow import FavorUnderflowWarning, count_zero_rows, flush_underflow_warnings

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "KERNELS",
    "ExpForm",
    "FavorState",
    "FavorUnderflowWarning",
    "FeatureMapOutput",
    "Kernel",
    "KernelLike",
    "ProjectionKind",
    "RowNorms",
    "causal_linear_attention",
    "causal_linear_attention_step",
    "count_zero_rows",
    "exact_attention",
    "exp_form",
    "favor_attention",
    "favor_attention_step",
    "favor_plus_plus_from_statistics",
    "favor_plus_plus_parameters",
    "favor_plus_plus_statistics",
    "feature_map",
    "flush_underflow_warnings",
    "gaussian_hyperbolic_features",
    "gaussian_positive_features",
    "gaussian_projection",
    "gaussian_trigonometric_features",
    "generalized_features",
    "get_kernel",
    "guarded_divide",
    "hyperbolic_softmax_features",
    "kernel_attention",
    "key_offsets",
    "linear_attention",
    "make_projection",
    "naive_favor_attention",
    "optimal_positive_features",
    "orthogonal_projection",
    "pair_mean_sq_norm",
    "positive_softmax_features",
    "register_kernel",
    "safe_reciprocal",
    "stabilize_keys",
    "stabilize_queries",
    "theory",
    "trigonometric_softmax_features",
]
