"""What the Performer models return: hidden states, logits, losses and the decoding cache."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from performers.layers import LayerCache

__all__ = ["CausalLMOutput", "MaskedLMOutput", "PerformerCache", "PerformerModelOutput"]


@dataclass
class PerformerCache:
    """Everything a causal model needs to continue a sequence: one cache per layer.

    Attributes:
        layers: per layer a :class:`~performers.FavorState` (FAVOR+, ``O(M·D)`` per head,
            independent of the length) or a :class:`~performers.layers.KVCache` (exact).
        next_position: ``(B,)`` position id of the next token of each row.
        length: number of positions processed so far (padding included).
    """

    layers: list[LayerCache]
    next_position: Tensor
    length: int


@dataclass
class PerformerModelOutput:
    """``last_hidden_state``: ``(B, L, E)`` after the final LayerNorm; the cache with ``use_cache``.

    ``hidden_states`` (with ``output_hidden_states=True``): ``num_layers + 1`` tensors
    ``(B, L, E)``: index 0 the embedding output (token + learned position embeddings, after
    dropout), index ``i`` the output of block ``i`` (the residual stream, not normalized), except
    the last, which is taken after the final LayerNorm and so is ``last_hidden_state`` itself
    (the Hugging Face convention).
    """

    last_hidden_state: Tensor
    past_key_values: PerformerCache | None = None
    hidden_states: tuple[Tensor, ...] | None = None


@dataclass
class MaskedLMOutput:
    """``logits``: ``(B, L, V)``; ``loss``: mean cross-entropy over labels != -100 (when labels given).

    ``hidden_states``: ``(B, L, E)`` of the last layer (after the final LayerNorm);
    ``all_hidden_states``: every layer's, as :attr:`PerformerModelOutput.hidden_states`, with
    ``output_hidden_states=True``.
    """

    logits: Tensor
    loss: Tensor | None = None
    hidden_states: Tensor | None = None
    all_hidden_states: tuple[Tensor, ...] | None = None


@dataclass
class CausalLMOutput:
    """``logits``: ``(B, L, V)`` (or the last ``logits_to_keep``); ``loss``: next-token cross-entropy.

    ``hidden_states``: ``(B, L, E)`` of the last layer (after the final LayerNorm, the last
    ``logits_to_keep`` positions when given); ``all_hidden_states``: every layer's, full length,
    as :attr:`PerformerModelOutput.hidden_states`, with ``output_hidden_states=True``.
    """

    logits: Tensor
    loss: Tensor | None = None
    past_key_values: PerformerCache | None = None
    hidden_states: Tensor | None = None
    all_hidden_states: tuple[Tensor, ...] | None = None
