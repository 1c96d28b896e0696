"""performers: linear-time Transformers with FAVOR+ random-feature attention."""

from performers.layers import (
    FavorAttention,
    FavorConfig,
    FeatureRedrawer,
    MultiheadFavorAttention,
    PerformerCrossAttention,
    PerformerSelfAttention,
    replace_multihead_attention,
)
from performers.models import (
    PerformerConfig,
    PerformerForCausalLM,
    PerformerForMaskedLM,
    PerformerModel,
    build_model,
    from_pretrained,
    generate,
    save_pretrained,
)
from performers.ops import (
    KERNELS,
    FavorState,
    FavorUnderflowWarning,
    exact_attention,
    favor_attention,
    favor_attention_step,
    feature_map,
    flush_underflow_warnings,
    gaussian_projection,
    get_kernel,
    linear_attention,
    make_projection,
    orthogonal_projection,
)
from performers.utils import package_version

__version__ = package_version()

__all__ = [
    "KERNELS",
    "FavorAttention",
    "FavorConfig",
    "FavorState",
    "FavorUnderflowWarning",
    "FeatureRedrawer",
    "MultiheadFavorAttention",
    "PerformerConfig",
    "PerformerCrossAttention",
    "PerformerForCausalLM",
    "PerformerForMaskedLM",
    "PerformerModel",
    "PerformerSelfAttention",
    "build_model",
    "exact_attention",
    "favor_attention",
    "favor_attention_step",
    "feature_map",
    "flush_underflow_warnings",
    "from_pretrained",
    "gaussian_projection",
    "generate",
    "get_kernel",
    "linear_attention",
    "make_projection",
    "orthogonal_projection",
    "replace_multihead_attention",
    "save_pretrained",
]
