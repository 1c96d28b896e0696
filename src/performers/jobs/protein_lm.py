"""What embedding and scoring need of a protein language model, and this package's models as one.

:mod:`performers.jobs.embedding` and :mod:`performers.jobs.scoring` take their model through
:class:`ProteinLM`: token ids → logits, token ids → the hidden states of every layer, and a
:class:`ProteinVocabulary` (residue ↔ id, and the ids of ``<mask>``, ``<cls>``, ``<eos>`` and
``<pad>``). :func:`as_protein_lm` wraps this package's models
(:class:`~performers.models.PerformerForMaskedLM`, :class:`~performers.models.PerformerForCausalLM`
or a bare :class:`~performers.models.PerformerModel`, which has hidden states but no logits);
another model family (a Hugging Face ESM, say) plugs in with an adapter of the same shape.

The layout the jobs assume: one token per residue, a protein encoded as
``[<cls>, residues..., <eos>]`` and padded on the right with ``<pad>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from performers.models import PerformerForCausalLM, PerformerForMaskedLM, PerformerModel
from performers.training import evaluation_mode, model_device

__all__ = ["PerformerProteinLM", "ProteinLM", "ProteinVocabulary", "as_protein_lm"]


class ProteinVocabulary(Protocol):
    """The tokenizer side: ``encode("MKV")`` is ``[cls_id, M, K, V, eos_id]`` (one id per
    residue; ``add_special_tokens=False`` drops ``<cls>``/``<eos>``). ``unk_id`` (when the
    vocabulary has one) marks a letter it does not know."""

    pad_id: int
    mask_id: int
    cls_id: int
    eos_id: int

    def encode(self, sequence: str, *, add_special_tokens: bool = True) -> list[int]: ...


@runtime_checkable
class ProteinLM(Protocol):
    """A protein language model as the jobs use it; every call runs without autograd, in eval mode.

    Attributes:
        tokenizer: its :class:`ProteinVocabulary`.
        num_layers: transformer blocks; :meth:`hidden_states` returns ``num_layers + 1`` tensors.
        is_causal: each position sees its prefix only (a causal LM), else bidirectional.
        residue_limit: most residues one protein may have (positions the model has), None for
            no limit (rotary positions).
        device: where the ids must be.

    An implementation may also have ``one_token_per_residue`` (read with ``getattr``, default
    True): False for a tokenizer whose tokens span several residues (ProtGPT2's byte-pair
    tokens), for which the jobs give whole-protein results only (mean embeddings, sequence
    log-likelihoods) and refuse per-residue ones.
    """

    tokenizer: ProteinVocabulary
    num_layers: int
    is_causal: bool
    residue_limit: int | None
    device: torch.device

    def logits(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``(B, L)`` ids and mask (1 = token, 0 = padding) → ``(B, L, V)`` logits: a masked LM's
        prediction at each position, a causal LM's prediction of the next token."""
        ...

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor) -> Sequence[Tensor]:
        """``num_layers + 1`` tensors ``(B, L, E)``: ``[0]`` the embedding output, ``[i]`` block
        ``i``'s output, the last one after the final LayerNorm (what the LM head reads)."""
        ...


class PerformerProteinLM:
    """:class:`ProteinLM` of this package's models (see the module docstring)."""

    def __init__(self, model: nn.Module, tokenizer: ProteinVocabulary) -> None:
        if isinstance(model, PerformerForCausalLM):
            self.encoder, self.is_causal = model.model, True
        elif isinstance(model, PerformerForMaskedLM):
            self.encoder, self.is_causal = model.model, False
        elif isinstance(model, PerformerModel):
            self.encoder, self.is_causal = model, False
        else:
            raise TypeError(
                "model must be a PerformerForMaskedLM, PerformerForCausalLM or PerformerModel "
                f"(or a ProteinLM), got {type(model).__name__}"
            )
        self.model, self.tokenizer = model, tokenizer
        self.one_token_per_residue = True
        config = self.encoder.config
        self.num_layers = config.num_layers
        # Learned positions stop at max_position_embeddings, two of which <cls> and <eos> take.
        self.residue_limit = config.max_position_embeddings - 2 if config.position == "learned" else None

    @property
    def device(self) -> torch.device:
        return model_device(self.encoder)

    def logits(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        if self.model is self.encoder:
            raise TypeError("this needs a language model (PerformerForMaskedLM or PerformerForCausalLM)")
        with evaluation_mode(self.model):
            return self.model(input_ids, attention_mask).logits

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor) -> Sequence[Tensor]:
        with evaluation_mode(self.model):
            out = self.encoder(input_ids, attention_mask, is_causal=self.is_causal, output_hidden_states=True)
        return out.hidden_states


def as_protein_lm(model: nn.Module | ProteinLM, tokenizer: ProteinVocabulary | None = None) -> ProteinLM:
    """``model`` as a :class:`ProteinLM`: returned as it is when it already is one (``tokenizer``
    is then ignored), else this package's model wrapped with ``tokenizer``.

    Raises:
        TypeError: neither a ProteinLM nor one of this package's models, or no tokenizer for one.
    """
    if isinstance(model, ProteinLM):
        return model
    if tokenizer is None:
        raise TypeError(f"a {type(model).__name__} needs its tokenizer")
    return PerformerProteinLM(model, tokenizer)
