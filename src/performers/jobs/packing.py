"""Packed batches for ``embed``, ``score`` and ``evaluate``: proteins laid end to end in one row.

A padded batch computes ``rows × longest`` positions; a packed row computes only the real
tokens: proteins are laid back to back in one row ``(1, T)`` described by ``cu_seqlens`` (int32
``(N + 1,)``, protein ``i`` at positions ``cu_seqlens[i] .. cu_seqlens[i + 1] - 1``). This
package's models (:class:`~performers.models.PerformerModel` and its language-model heads)
attend only within each protein and restart positions per protein
(:mod:`performers.layers.packed`), so every protein's outputs equal those it has in a padded
batch, up to float rounding.

* :func:`packed_batches` — the one batching rule: proteins in input order, a row closed when one
  more protein would pass ``max_tokens`` *real* tokens (a longer protein gets a row alone).
* :func:`encode_packed` — proteins encoded end to end, with their ``cu_seqlens``.
* :func:`pack_rows` / :func:`unpack_rows` — a padded batch to its packed row and a packed
  output back to the padded layout (``evaluate`` keeps its batches and masks, and its
  metrics read the padded layout).
* :func:`resolve_pack` — ``pack=None`` packs when the model takes packed input (this package's
  models); a Hugging Face model (:mod:`performers.jobs.hf_protein_lm`) runs padded, and
  ``pack=True`` with it is refused (:class:`PackingError`).
* :func:`packed_logits`, :func:`packed_hidden_states` — one packed forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from performers.jobs.protein_lm import PerformerProteinLM, ProteinLM, ProteinVocabulary
from performers.models import PerformerForCausalLM, PerformerForMaskedLM, PerformerModel
from performers.training import evaluation_mode
from performers.utils import InputError
from performers.utils.validation import is_int

__all__ = [
    "PackingError",
    "cu_seqlens_of",
    "encode_packed",
    "pack_rows",
    "packed_batches",
    "packed_hidden_states",
    "packed_logits",
    "resolve_pack",
    "segment_ids",
    "takes_packed_input",
    "unpack_rows",
]

_PERFORMER_MODELS = (PerformerForMaskedLM, PerformerForCausalLM, PerformerModel)


class PackingError(InputError):
    """``pack=True`` (``--pack``) for a model that does not take packed input."""


def takes_packed_input(model: nn.Module | ProteinLM) -> bool:
    """Whether ``model`` (one of this package's models or a ProteinLM wrapping one) takes
    ``cu_seqlens``. A Hugging Face protein model's adapter does not: the jobs run it padded."""
    return isinstance(model, (PerformerProteinLM, *_PERFORMER_MODELS))


def resolve_pack(pack: bool | None, model: nn.Module | ProteinLM) -> bool:
    """``pack`` as a decision: None packs when :func:`takes_packed_input`, False never.

    Raises:
        PackingError: ``pack=True`` for a model that does not take packed input.
        TypeError: ``pack`` neither a bool nor None.
    """
    if pack is not None and not isinstance(pack, bool):
        raise TypeError(f"pack must be True, False or None (pack when the model can), got {pack!r}")
    supported = takes_packed_input(model)
    if pack and not supported:
        kind = type(getattr(model, "model", model)).__name__
        raise PackingError(
            f"pack=True (--pack): this model ({kind}) does not take packed input (cu_seqlens); only "
            "performers models do. Leave pack=None (--pack unset) to run it padded, or pack=False (--no-pack)"
        )
    return supported if pack is None else pack


def packed_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices of ``lengths`` (tokens per item) grouped into packed rows of at most ``max_tokens``
    real tokens, in input order: a row is closed when the next item would pass the budget; an
    item longer than ``max_tokens`` gets a row of its own (nothing is split). Every index
    appears in exactly one row.

    Input order (no sorting) because a packed row has no padding to save: the order changes
    only which proteins share a pass, never the positions computed.
    """
    if not is_int(max_tokens) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
    rows: list[list[int]] = []
    used = 0
    for index, length in enumerate(lengths):
        if rows and used + length <= max_tokens:
            rows[-1].append(index)
            used += length
        else:
            rows.append([index])
            used = length
    return rows


def cu_seqlens_of(lengths: Sequence[int], device: torch.device | str | None = None) -> Tensor:
    """``cu_seqlens`` (int32 ``(N + 1,)``: 0, then the running sums) of items of ``lengths``."""
    offsets = [0]
    for length in lengths:
        offsets.append(offsets[-1] + int(length))
    return torch.tensor(offsets, dtype=torch.int32, device=device)


def encode_packed(tokenizer: ProteinVocabulary, sequences: Sequence[str]) -> tuple[Tensor, Tensor]:
    """``[<cls>, residues..., <eos>]`` of each sequence, end to end in one row: ``(input_ids
    (1, T) int64, cu_seqlens (N + 1,) int32)``, on the CPU."""
    encoded = [tokenizer.encode(sequence) for sequence in sequences]
    ids = torch.tensor([token for tokens in encoded for token in tokens], dtype=torch.long)
    return ids[None], cu_seqlens_of([len(tokens) for tokens in encoded])


def segment_ids(cu_seqlens: Tensor) -> Tensor:
    """``(T,)`` int64: the item each position of a packed row belongs to (0 .. N-1)."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    items = torch.arange(len(lengths), device=cu_seqlens.device)
    return torch.repeat_interleave(items, lengths, output_size=int(cu_seqlens[-1]))


def pack_rows(rows: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """A right-padded batch ``(B, L, ...)`` as one packed row ``(1, T, ...)`` of its real
    tokens (``attention_mask`` ``(B, L)``, 1 = token), and its ``cu_seqlens``."""
    keep = attention_mask.bool()
    lengths = keep.sum(dim=1)
    return rows[keep].unsqueeze(0), cu_seqlens_of(lengths.tolist(), device=rows.device)


def unpack_rows(packed: Tensor, attention_mask: Tensor, fill: float | int = 0) -> Tensor:
    """The inverse of :func:`pack_rows`: a packed row ``(1, T, ...)`` back in the padded layout
    ``(B, L, ...)`` of ``attention_mask``, ``fill`` at the padding."""
    keep = attention_mask.bool()
    out = packed.new_full((*keep.shape, *packed.shape[2:]), fill)
    out[keep] = packed[0]
    return out


def _performer(lm: nn.Module | ProteinLM) -> tuple[nn.Module, PerformerModel, bool]:
    """``(model, encoder, is_causal)`` of a performers model or its :class:`PerformerProteinLM`."""
    if isinstance(lm, PerformerProteinLM):
        return lm.model, lm.encoder, lm.is_causal
    if isinstance(lm, PerformerForCausalLM):
        return lm, lm.model, True
    if isinstance(lm, PerformerForMaskedLM):
        return lm, lm.model, False
    if isinstance(lm, PerformerModel):
        return lm, lm, False
    raise PackingError(f"packed input needs a performers model, got {type(lm).__name__}")


def packed_logits(lm: nn.Module | ProteinLM, input_ids: Tensor, cu_seqlens: Tensor) -> Tensor:
    """``(1, T, V)`` logits of one packed row ``input_ids`` ``(1, T)`` (eval mode, no autograd):
    a masked LM's prediction at each position, a causal LM's of the next token *within* the
    protein (the last position of a protein predicts nothing that is read)."""
    model, encoder, _ = _performer(lm)
    if model is encoder:
        raise TypeError("this needs a language model (PerformerForMaskedLM or PerformerForCausalLM)")
    with evaluation_mode(model):
        return model(input_ids, cu_seqlens=cu_seqlens).logits


def packed_hidden_states(
    lm: nn.Module | ProteinLM, input_ids: Tensor, cu_seqlens: Tensor
) -> Sequence[Tensor]:
    """``num_layers + 1`` tensors ``(1, T, E)`` of one packed row, as
    :meth:`~performers.jobs.protein_lm.ProteinLM.hidden_states` gives them for a padded batch."""
    model, encoder, causal = _performer(lm)
    with evaluation_mode(model):
        out = encoder(input_ids, is_causal=causal, output_hidden_states=True, cu_seqlens=cu_seqlens)
    return out.hidden_states
