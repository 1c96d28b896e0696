"""Performer models (encoder, masked LM, causal LM), generation and save/load."""

from performers.models.blocks import PerformerBlock
from performers.models.config import ConfigError, PerformerConfig
from performers.models.generation import GenerationMixin, generate, sample_next_token
from performers.models.io import ModelLoadError, from_pretrained, save_pretrained
from performers.models.masks import position_ids_from_padding
from performers.models.outputs import CausalLMOutput, MaskedLMOutput, PerformerCache, PerformerModelOutput
from performers.models.performer import (
    TASKS,
    PerformerForCausalLM,
    PerformerForMaskedLM,
    PerformerModel,
    PerformerPreTrainedModel,
    build_model,
)

__all__ = [
    "TASKS",
    "CausalLMOutput",
    "ConfigError",
    "GenerationMixin",
    "MaskedLMOutput",
    "ModelLoadError",
    "PerformerBlock",
    "PerformerCache",
    "PerformerConfig",
    "PerformerForCausalLM",
    "PerformerForMaskedLM",
    "PerformerModel",
    "PerformerModelOutput",
    "PerformerPreTrainedModel",
    "build_model",
    "from_pretrained",
    "generate",
    "position_ids_from_padding",
    "sample_next_token",
    "save_pretrained",
]
