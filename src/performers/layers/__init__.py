"""``nn.Module`` building blocks on top of :mod:`performers.ops`: the FAVOR options
(:class:`FavorConfig`), FAVOR attention with its projection, multi-head self/cross-attention with
a switchable exact backend, feature redraw, rotary positions."""

from performers.layers.attention import (
    ATTENTION_BACKENDS,
    LayerCache,
    MultiheadAttentionBase,
    PerformerCrossAttention,
    PerformerSelfAttention,
)
from performers.layers.favor import FavorAttention, projection_seed
from performers.layers.favor_config import ConfigError, FavorConfig
from performers.layers.kv_cache import KVCache
from performers.layers.multihead import AttentionDropoutWarning, MultiheadFavorAttention
from performers.layers.packed import (
    cu_seqlens_from_position_ids,
    packed_favor_attention,
    packed_position_ids,
    packed_sdpa_attention,
)
from performers.layers.redraw import FeatureRedrawer, favor_modules
from performers.layers.replace import replace_multihead_attention
from performers.layers.rotary import RotaryEmbedding, apply_rotary
from performers.layers.sdpa import sdpa_attention

__all__ = [
    "ATTENTION_BACKENDS",
    "AttentionDropoutWarning",
    "ConfigError",
    "FavorAttention",
    "FavorConfig",
    "FeatureRedrawer",
    "KVCache",
    "LayerCache",
    "MultiheadAttentionBase",
    "MultiheadFavorAttention",
    "PerformerCrossAttention",
    "PerformerSelfAttention",
    "RotaryEmbedding",
    "apply_rotary",
    "cu_seqlens_from_position_ids",
    "favor_modules",
    "packed_favor_attention",
    "packed_position_ids",
    "packed_sdpa_attention",
    "projection_seed",
    "replace_multihead_attention",
    "sdpa_attention",
]
