"""FAVOR attention as tensor functions: projections, feature maps, the attention paths by
direction and their naive references.

Import what you call from here (``performers.ops``): the attention functions, projections, the
kernel registry and its feature maps, the causal state, the references and ``theory``. The
modules hold one algorithm each; the internals (stabilizers, numeric helpers, the paths) are
imported from their module.

==========================  ==================================================================
``attention``               ``favor_attention`` / ``favor_attention_step`` / ``linear_attention``:
                            checks and the choice of path only
``call``                    ``FavorCall``: one checked call, as it travels to its path
``bidirectional/``          every query sees every key: ``naive`` (references), ``generic``
                            (materialized features), ``fused`` (exponential kernels, blocks of
                            keys, hand-written backward), ``favor`` (runs the chosen path)
``causal/``                 query ``i`` sees keys ``j ≤ i``: ``naive`` (references, the
                            recurrence), ``generic`` (chunked prefix sums, any kernel and state),
                            ``fused`` (exponential kernels, segments of chunks), ``recurrent``
                            (one position from the state: decoding), ``favor``
``triton/``                 the same paths as Triton kernels for CUDA (``bidirectional``,
                            ``causal``, ``decode``; exponential and generalized maps), imported
                            lazily; ``paths`` says which calls they serve
``naive``                   the quadratic definitions the direction references build on
``projections``             random projections ``W`` ``(M, D)``: iid Gaussian, block-orthogonal
``features``                feature maps ``φ``, the exponential form written once, stabilizers
``favor_plus_plus``         FAVOR++ (GERF) features and their data-dependent parameter ``A``
``kernels``                 the estimator registry (``KERNELS``, ``Kernel``, ``feature_map``)
``generic_features``        stabilized features of any kernel for the generic paths
``numerics``                helpers shared by references and fast paths (guarded division,
                            stabilizer offsets, chunk rescaling)
``state``                   ``FavorState`` (the causal recurrent state), ``DEFAULT_CHUNK_SIZE``
``checks``                  input checks: typed errors naming the argument and its shape,
                            and the check of a causal state against the inputs it continues
``masks``                   SDPA's keywords: ``is_causal`` (and the older ``causal``), boolean
                            ``attn_mask`` factored into key padding and causality, ``dropout_p``
``shards``                  the protocol through which a sequence split over processes
                            completes its statistics (context parallelism)
``underflow``               query rows that underflowed to zero, counted and reported
                            (``FavorUnderflowWarning``); the one module with process-wide
                            state: a queue of counts still on the GPU, its lock, an exit hook
``theory``                  Lemma 2 / Theorem 2 / FAVOR++ closed forms
==========================  ==================================================================

Everything else here is a function of its tensors, except ``underflow``'s queue and
``kernels``' registry (``register_kernel`` adds to it).
"""

from performers.ops import theory
from performers.ops.attention import OP_BACKENDS, favor_attention, favor_attention_step, linear_attention
from performers.ops.favor_plus_plus import favor_plus_plus_parameters, optimal_positive_features
from performers.ops.features import (
    FeatureMapOutput,
    gaussian_hyperbolic_features,
    gaussian_positive_features,
    gaussian_trigonometric_features,
    generalized_features,
    hyperbolic_softmax_features,
    positive_softmax_features,
    trigonometric_softmax_features,
)
from performers.ops.kernels import KERNELS, Kernel, KernelLike, feature_map, get_kernel, register_kernel
from performers.ops.naive import exact_attention, kernel_attention, naive_favor_attention
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
    "OP_BACKENDS",
    "FavorState",
    "FavorUnderflowWarning",
    "FeatureMapOutput",
    "Kernel",
    "KernelLike",
    "ProjectionKind",
    "RowNorms",
    "count_zero_rows",
    "exact_attention",
    "favor_attention",
    "favor_attention_step",
    "favor_plus_plus_parameters",
    "feature_map",
    "flush_underflow_warnings",
    "gaussian_hyperbolic_features",
    "gaussian_positive_features",
    "gaussian_projection",
    "gaussian_trigonometric_features",
    "generalized_features",
    "get_kernel",
    "hyperbolic_softmax_features",
    "kernel_attention",
    "linear_attention",
    "make_projection",
    "naive_favor_attention",
    "optimal_positive_features",
    "orthogonal_projection",
    "positive_softmax_features",
    "register_kernel",
    "theory",
    "trigonometric_softmax_features",
]
