"""Performer models (encoder, masked LM, causal LM), generation and save/load."""

from performers.models.config import PerformerConfig
from performers.models.generation import generate, sample_next_token
from performers.models.io import from_pretrained, load_safetensors, save_pretrained
from performers.models.performer import (
    CausalLMOutput,
    MaskedLMOutput,
    PerformerBlock,
    PerformerCache,
    PerformerForCausalLM,
    PerformerForMaskedLM,
    PerformerModel,
    PerformerModelOutput,
    PerformerPreTrainedModel,
    position_ids_from_padding,
)

__all__ = [
    "CausalLMOutput",
    "MaskedLMOutput",
    "PerformerBlock",
    "PerformerCache",
    "PerformerConfig",
    "PerformerForCausalLM",
    "PerformerForMaskedLM",
    "PerformerModel",
    "PerformerModelOutput",
    "PerformerPreTrainedModel",
    "from_pretrained",
    "generate",
    "load_safetensors",
    "position_ids_from_padding",
    "sample_next_token",
    "save_pretrained",
]
