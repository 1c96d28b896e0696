"""Pseudo-log-likelihoods of many proteins, the masked copies of all of them packed together.

The pseudo-log-likelihood of a protein of ``n`` residues (Salazar et al. 2020) is
``Σ_i log p(r_i | x with r_i masked)``: ``n`` masked copies of ``[<cls>, r_1 .. r_n, <eos>]``,
one per residue, each one forward pass's worth of ``n + 2`` tokens. Those copies are
independent, so which copies share a forward pass changes nothing but the speed: here the
copies of *every* protein are laid out longest protein first and cut into batches of at most
``max_tokens`` padded tokens (``rows × longest``), so that a batch mixes the last copies of one
protein with the first copies of the next instead of ending half empty at each protein, and
short proteins fill whole batches together. Each batch's log-probabilities of the true residues
are added into their protein's total in float64.

:func:`copy_batches` is that schedule; :func:`pseudo_log_likelihoods` runs it. The results are
those of one protein at a time (:func:`performers.jobs.scoring.per_protein_pseudo_log_likelihoods`,
the schedule ``performers score`` used before) up to the order of the float sums.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from performers.jobs.embedding import DEFAULT_MAX_TOKENS, SPECIAL_TOKENS_PER_PROTEIN, Progress
from performers.jobs.protein_lm import ProteinLM, ProteinVocabulary, as_protein_lm
from performers.utils.validation import is_int

__all__ = ["copy_batches", "pseudo_log_likelihoods"]


def copy_batches(lengths: Sequence[int], max_tokens: int) -> Iterator[list[tuple[int, int]]]:
    """The masked copies of proteins of ``lengths`` residues, as batches of ``(protein, residue)``
    pairs (0-based) of at most ``max_tokens`` padded tokens, a copy being ``length + 2`` tokens.

    Proteins are taken longest first (ties in input order) and their copies in residue order,
    so each batch's first copy is its longest; a batch is closed when one more copy would pass
    the budget. A copy longer than the budget gets a batch of its own. Every copy appears once.
    """
    if not is_int(max_tokens) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batch: list[tuple[int, int]] = []
    longest = 0
    for protein in order:
        for residue in range(lengths[protein]):
            if batch and (len(batch) + 1) * longest > max_tokens:
                yield batch
                batch = []
            if not batch:
                longest = lengths[protein] + SPECIAL_TOKENS_PER_PROTEIN
            batch.append((protein, residue))
    if batch:
        yield batch


def _runs(batch: list[tuple[int, int]]) -> Iterator[tuple[int, int, int]]:
    """``(protein, first row, end row)`` of each run of copies of one protein in ``batch``."""
    start = 0
    for row in range(1, len(batch) + 1):
        if row == len(batch) or batch[row][0] != batch[start][0]:
            yield batch[start][0], start, row
            start = row


def _batch_ids(
    vocabulary: ProteinVocabulary, encoded: list[Tensor], batch: list[tuple[int, int]]
) -> tuple[Tensor, Tensor, Tensor]:
    """``(input_ids, attention_mask, masked columns)`` of ``batch``: each row a protein's
    encoding, right-padded, with its residue replaced by ``<mask>``."""
    longest = len(encoded[batch[0][0]])
    ids = torch.full((len(batch), longest), vocabulary.pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for protein, start, end in _runs(batch):  # one broadcast copy per protein, not per row
        length = len(encoded[protein])
        ids[start:end, :length] = encoded[protein]
        mask[start:end, :length] = 1
    cols = torch.tensor([residue + 1 for _, residue in batch], dtype=torch.long)  # after <cls>
    return ids, mask, cols


def pseudo_log_likelihoods(
    model: nn.Module | ProteinLM,
    tokenizer: ProteinVocabulary | None,
    sequences: Sequence[str],
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: Progress | None = None,
) -> list[float]:
    """``Σ_i log p(r_i | x with r_i masked)`` (natural log) of each sequence under a masked
    model, in input order: one masked copy per residue, the copies of all the sequences packed
    into batches of at most ``max_tokens`` padded tokens (:func:`copy_batches`). Nothing is
    cropped; ``progress`` advances by one per residue scored.

    Args:
        model: a masked :class:`~performers.jobs.protein_lm.ProteinLM`, or this package's
            :class:`~performers.models.PerformerForMaskedLM` with its ``tokenizer``.

    Raises:
        TypeError: a causal model (its exact log-likelihood needs no masking).
        ValueError: ``max_tokens`` not a positive int.
    """
    lm = as_protein_lm(model, tokenizer)
    if lm.is_causal:
        raise TypeError("a pseudo-log-likelihood needs a masked language model, got a causal one")
    vocabulary, device = lm.tokenizer, lm.device
    encoded = [torch.tensor(vocabulary.encode(s), dtype=torch.long) for s in sequences]
    totals = torch.zeros(len(sequences), dtype=torch.float64)
    for batch in copy_batches([len(e) - SPECIAL_TOKENS_PER_PROTEIN for e in encoded], max_tokens):
        ids, mask, cols = _batch_ids(vocabulary, encoded, batch)
        truth = ids[torch.arange(len(batch)), cols]  # the residue each row hides
        ids[torch.arange(len(batch)), cols] = vocabulary.mask_id
        logits = lm.logits(ids.to(device), mask.to(device))
        picked = logits[torch.arange(len(batch), device=device), cols.to(device)]
        # At least float32 for the softmax, float64 for the sums over thousands of residues.
        log_probs = torch.log_softmax(picked.to(torch.promote_types(picked.dtype, torch.float32)), dim=-1)
        chosen = log_probs.gather(-1, truth.to(device)[:, None])[:, 0].double().cpu()
        proteins = torch.tensor([protein for protein, _ in batch], dtype=torch.long)
        totals.index_add_(0, proteins, chosen)
        if progress is not None:
            progress.update(len(batch))
    return totals.tolist()
