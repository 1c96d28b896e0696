"""Log-likelihoods of proteins and zero-shot variant effects from a trained model.

Per-sequence scores (:func:`score_proteins`), for a protein of ``n`` residues encoded as
``[<cls>, r_1 .. r_n, <eos>]``:

* **causal models** — the exact log-likelihood ``Σ_{t=1}^{n+1} log p(x_t | x_<t)``: the ``n``
  residues and the ``<eos>`` that ends the protein, each predicted from its prefix (``<cls>``
  is given, not predicted); ``n + 1`` terms, one forward pass per protein (batched: packed end
  to end for this package's models, :mod:`performers.jobs.packing`; padded for others).
* **masked models** — the pseudo-log-likelihood ``Σ_{i=1}^{n} log p(r_i | x with r_i masked)``
  (Salazar et al. 2020): ``n`` masked copies of the protein, each with one residue replaced
  by ``<mask>``, i.e. ``n`` forward passes' worth of ``n + 2`` tokens per protein —
  ``O(n²·M·D)`` per layer with FAVOR+ (``O(n³·D)`` with exact attention). The copies of all
  the proteins are packed into batches by the token budget (:mod:`performers.jobs.pseudo_likelihood`).

Perplexity is ``exp(−log_likelihood / terms)``, ``terms`` being ``n + 1`` (causal) or ``n``
(pseudo-perplexity). A causal model whose tokens span several residues (ProtGPT2's byte-pair
tokens) is scored over its own tokens: ``terms`` is its token count plus the ``<eos>``; the
masked scores and strategies, which mask one residue at a time, are refused for such a model.

Variant effects (:func:`score_mutants`; :func:`score_dms` for a ProteinGym DMS file,
:func:`variant_effects` for variant sequences) score substitutions ``(i, wt → mt)`` of a wild
type ``x`` with the strategies of ESM (Meier et al. 2021), ``log p`` being the model's
log-probabilities at a position, higher = more likely than the wild type:

* ``masked-marginals`` — ``Σ_i log p(x_i = mt | x with i masked) − log p(x_i = wt | same)``:
  each mutated position is masked *on its own* in the wild type, so a multi-mutant scores the sum
  of its single mutants, and every mutant of an assay comes from at most ``L`` masked passes of
  the wild type (one per position mutated anywhere in it, batched).
* ``wt-marginals`` — the same differences read from one unmasked pass of the wild type.
* ``pseudo-ppl`` — the pseudo-log-likelihood of the mutant minus that of the wild type (one
  masked pass per position of each mutant: ``L`` passes per mutant).
* ``log-likelihood-ratio`` — causal models: the exact ``LL(mutant) − LL(wild type)``.

The first three need a masked model, the last a causal one. None of them packs: every pass
holds the wild type or a mutant of its length, so padded batches have no padding to save. A
mutant without substitutions (the wild type itself) scores exactly 0 under every strategy,
without a forward pass. Mutants are written ``V39A:D40G`` (:func:`parse_mutations`,
:func:`apply_mutations`); lists of them and site-saturation scans are in
:mod:`performers.jobs.variant_scan`.

Proteins are scored whole, without windows (FAVOR+ attention is linear in the length), under
the one cropping rule of :mod:`performers.jobs.cropping`: :func:`score_proteins` crops only when
asked (``max_length``) or at a model's learned positions, and counts it (``length`` and
``scored_length`` per row). Variants are never cropped — a mutation's position means something
only in the whole wild type — so a model with learned positions refuses a wild type longer than
them (an error naming it). A rotary model takes any length — its exact-attention twin at
``O(L²)`` memory per pass, and past the length it was trained on its scores are extrapolations.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from performers.jobs.cropping import ReportedRows, crop_to_rule
from performers.jobs.embedding import (
    DEFAULT_MAX_TOKENS,
    SPECIAL_TOKENS_PER_PROTEIN,
    Progress,
    ProteinRecords,
    encoder_of,
    pad_encoded,
    place_model,
    protein_pairs,
    token_batches,
)
from performers.jobs.packing import encode_packed, packed_batches, packed_logits, resolve_pack, segment_ids
from performers.jobs.protein_lm import ProteinLM, ProteinVocabulary, as_protein_lm
from performers.jobs.pseudo_likelihood import pseudo_log_likelihoods
from performers.proteins import FastaRecord
from performers.training import spearman
from performers.utils import InputError, atomic_write, write_csv

__all__ = [
    "STRATEGIES",
    "DmsAssay",
    "DmsError",
    "DmsScores",
    "Mutation",
    "MutationError",
    "apply_mutations",
    "check_strategy",
    "dms_spearman",
    "find_mutations",
    "format_mutations",
    "marginal_log_probs",
    "masked_log_probs",
    "parse_mutations",
    "per_protein_pseudo_log_likelihoods",
    "read_dms",
    "score_dms",
    "score_mutants",
    "score_proteins",
    "sequence_log_likelihoods",
    "variant_effects",
    "write_dms_scores",
]

# ESM's three (masked models), and the exact log-likelihood ratio of causal models.
STRATEGIES = ("masked-marginals", "wt-marginals", "pseudo-ppl", "log-likelihood-ratio")
MASKED_STRATEGIES = STRATEGIES[:3]


@dataclass(frozen=True)
class Mutation:
    """A substitution: ``position`` is 1-based; ``str(m)`` is e.g. ``"V39A"``."""

    position: int
    wildtype: str
    mutant: str

    def __str__(self) -> str:
        return f"{self.wildtype}{self.position}{self.mutant}"


def find_mutations(wildtype: str, variant: str, *, name: str = "variant") -> list[Mutation]:
    """The substitutions that turn ``wildtype`` into ``variant``, in position order.

    Raises:
        ValueError: the two differ in length (``name`` identifies the variant).
    """
    if len(variant) != len(wildtype):
        raise ValueError(
            f"{name} has {len(variant)} residues but the wild type has {len(wildtype)}: variants "
            "must have the wild type's length (substitutions only)"
        )
    pairs = zip(wildtype.upper(), variant.upper(), strict=True)
    return [Mutation(i + 1, w, v) for i, (w, v) in enumerate(pairs) if w != v]


def format_mutations(mutations: Sequence[Mutation]) -> str:
    """``"V39A:D40G"`` (empty for none)."""
    return ":".join(str(m) for m in mutations)


class MutationError(InputError):
    """A mutation that is malformed or does not fit its wild type (the message names it)."""


def parse_mutations(text: str, wildtype: str | None = None, *, offset: int = 1) -> list[Mutation]:
    """Parse ``"V39A:D40G"`` (also ``,``/``;``/space separated); empty text is no mutation.

    ``offset`` is the number the text gives the wild type's first residue (as ``--offset`` and
    ESM's ``--offset-idx``); the mutations returned are 1-based in the wild type. With
    ``wildtype``, each position must exist and hold the stated wild-type residue.

    Raises:
        MutationError: a malformed mutation or one that disagrees with ``wildtype``, naming it.
    """
    mutations = []
    for word in text.replace(",", ":").replace(";", ":").replace(" ", ":").split(":"):
        if not word:
            continue
        number = word[1:-1]
        digits = number[1:] if number.startswith("-") else number
        if len(word) < 3 or not word[0].isalpha() or not word[-1].isalpha() or not digits.isdigit():
            raise MutationError(
                f"mutation {word!r} is not of the form V39A (wild type, 1-based position, mutant)"
            )
        mutation = Mutation(int(number) - offset + 1, word[0].upper(), word[-1].upper())
        if mutation.position < 1:
            first = "positions are 1-based" if offset == 1 else f"the first residue is number {offset}"
            raise MutationError(f"mutation {word!r}: {first}")
        if wildtype is not None:
            if mutation.position > len(wildtype):
                last = offset + len(wildtype) - 1
                raise MutationError(
                    f"mutation {word!r}: the wild type has {len(wildtype)} residues (numbered "
                    f"{offset}..{last})"
                )
            if wildtype[mutation.position - 1].upper() != mutation.wildtype:
                raise MutationError(
                    f"mutation {word!r}: the wild type has {wildtype[mutation.position - 1]!r} "
                    f"at position {number}"
                )
        mutations.append(mutation)
    return mutations


def apply_mutations(wildtype: str, mutations: str | Sequence[Mutation], *, offset: int = 1) -> str:
    """The sequence of ``wildtype`` with ``mutations`` applied: a text such as ``"A23G:L5P"``
    (numbered from ``offset``, as :func:`parse_mutations`) or :class:`Mutation` objects
    (1-based). No mutation gives the wild type back.

    Raises:
        MutationError: a malformed mutation, a position outside the wild type, a wild-type letter
            that is not the wild type's at that position, or a position mutated twice — the
            message names the mutation.
    """
    if isinstance(mutations, str):
        mutations = parse_mutations(mutations, wildtype, offset=offset)
    residues = list(wildtype)
    seen: set[int] = set()
    for m in mutations:
        name = f"{m.wildtype}{m.position + offset - 1}{m.mutant}"
        if not 1 <= m.position <= len(wildtype):
            raise MutationError(
                f"mutation {name!r}: position {m.position + offset - 1} is outside the wild type "
                f"(its {len(wildtype)} residues are numbered {offset}..{offset + len(wildtype) - 1})"
            )
        if wildtype[m.position - 1].upper() != m.wildtype.upper():
            raise MutationError(
                f"mutation {name!r}: the wild type has {wildtype[m.position - 1]!r} at position "
                f"{m.position + offset - 1}, not {m.wildtype!r}"
            )
        if m.position in seen:
            raise MutationError(f"mutation {name!r}: position {m.position + offset - 1} is mutated twice")
        seen.add(m.position)
        residues[m.position - 1] = m.mutant.upper()
    return "".join(residues)


def _log_softmax(logits: Tensor) -> Tensor:
    # At least float32: half-precision log-probabilities would lose the small differences.
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


def sequence_log_likelihoods(
    model: nn.Module | ProteinLM,
    tokenizer: ProteinVocabulary | None,
    sequences: Sequence[str],
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: Progress | None = None,
    pack: bool | None = None,
) -> list[float]:
    """Exact log-likelihood of each sequence under a causal model: ``Σ log p`` of the
    residues and ``<eos>`` given their prefixes (``n + 1`` terms; see the module docstring).
    Batched by ``max_tokens`` tokens: packed (real tokens, the sequences end to end in one row;
    :mod:`performers.jobs.packing`) when ``pack`` is True, or None and the model takes packed
    input; else padded (sorted by length). No cropping here. ``model``: a causal
    :class:`~performers.jobs.protein_lm.ProteinLM` or :class:`PerformerForCausalLM`."""
    lm = as_protein_lm(model, tokenizer)
    if not lm.is_causal:
        raise TypeError(f"exact log-likelihoods need a causal model, got {type(model).__name__}")
    device = lm.device
    lengths = [len(s) + SPECIAL_TOKENS_PER_PROTEIN for s in sequences]
    results = [0.0] * len(sequences)
    if resolve_pack(pack, lm):
        for batch in packed_batches(lengths, max_tokens):
            totals = _packed_log_likelihoods(lm, [sequences[i] for i in batch])
            for index, total in zip(batch, totals, strict=True):
                results[index] = total
            if progress is not None:
                progress.update(sum(len(sequences[i]) for i in batch))
        return results
    for batch in token_batches(lengths, max_tokens):
        ids, mask = pad_encoded(lm.tokenizer, [sequences[i] for i in batch])
        ids, mask = ids.to(device), mask.to(device)
        log_probs = _log_softmax(lm.logits(ids, mask)[:, :-1])  # position t predicts t + 1
        targets = ids[:, 1:]
        picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, L - 1)
        picked = picked.masked_fill(mask[:, 1:] == 0, 0.0)  # padding is not predicted
        for row, index in enumerate(batch):
            results[index] = float(picked[row].sum())
        if progress is not None:
            progress.update(sum(len(sequences[i]) for i in batch))
    return results


def _packed_log_likelihoods(lm: ProteinLM, sequences: Sequence[str]) -> list[float]:
    """:func:`sequence_log_likelihoods` of ``sequences`` in one packed row."""
    ids, cu_seqlens = (t.to(lm.device) for t in encode_packed(lm.tokenizer, sequences))
    log_probs = _log_softmax(packed_logits(lm, ids, cu_seqlens)[0, :-1])  # t predicts t + 1
    picked = log_probs.gather(-1, ids[0, 1:, None])[:, 0]  # (T - 1,)
    # A protein's first token (<cls>) is given, not predicted from the protein before it.
    picked[cu_seqlens[1:-1].long() - 1] = 0.0
    sums = torch.zeros(len(sequences), dtype=picked.dtype, device=picked.device)
    sums.index_add_(0, segment_ids(cu_seqlens)[:-1], picked)
    return sums.tolist()


def masked_log_probs(
    model: nn.Module | ProteinLM,
    tokenizer: ProteinVocabulary | None,
    jobs: Sequence[tuple[Tensor, Sequence[int]]],
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: Progress | None = None,
) -> list[Tensor]:
    """For each job ``(token_ids, positions)`` — ``token_ids`` ``(L,)`` an encoded protein
    (``<cls>``, residues, ``<eos>``), ``positions`` 0-based *residue* positions — mask those
    residues and return the model's log-probabilities there, ``(len(positions), V)`` (at least
    float32, on the CPU). Jobs are batched by ``max_tokens`` padded tokens; ``progress``
    advances by one per job."""
    lm = as_protein_lm(model, tokenizer)
    vocabulary, device = lm.tokenizer, lm.device
    lengths = [len(ids) for ids, _ in jobs]
    results: list[Tensor | None] = [None] * len(jobs)
    for batch in token_batches(lengths, max_tokens):
        longest = lengths[batch[0]]  # token_batches puts the longest first
        ids = torch.full((len(batch), longest), vocabulary.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, index in enumerate(batch):
            ids[row, : lengths[index]] = jobs[index][0]
            mask[row, : lengths[index]] = 1
        rows = torch.tensor([r for r, i in enumerate(batch) for _ in jobs[i][1]], dtype=torch.long)
        cols = torch.tensor([p + 1 for i in batch for p in jobs[i][1]], dtype=torch.long)  # after <cls>
        ids[rows, cols] = vocabulary.mask_id
        logits = lm.logits(ids.to(device), mask.to(device))
        log_probs = _log_softmax(logits[rows.to(device), cols.to(device)]).cpu()
        start = 0
        for index in batch:
            count = len(jobs[index][1])
            results[index] = log_probs[start : start + count]
            start += count
        if progress is not None:
            progress.update(len(batch))
    return results


def _encode(tokenizer: ProteinVocabulary, sequence: str) -> Tensor:
    return torch.tensor(tokenizer.encode(sequence), dtype=torch.long)


def per_protein_pseudo_log_likelihoods(
    model: nn.Module | ProteinLM,
    tokenizer: ProteinVocabulary | None,
    sequences: Sequence[str],
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: Progress | None = None,
) -> list[float]:
    """Pseudo-log-likelihoods one protein at a time: each protein's masked copies batched by
    ``max_tokens``, never mixed with another protein's — how ``performers score`` ran until
    :func:`~performers.jobs.pseudo_likelihood.pseudo_log_likelihoods` packed the copies of all
    proteins together (same results up to float rounding); kept as the reference that
    ``performers bench pll`` measures against. ``progress`` advances by one per residue."""
    lm = as_protein_lm(model, tokenizer)
    results = []
    for sequence in sequences:  # one protein at a time: its n copies are never all in memory
        ids = _encode(lm.tokenizer, sequence)
        jobs = [(ids, (i,)) for i in range(len(sequence))]
        log_probs = torch.cat(masked_log_probs(lm, None, jobs, max_tokens=max_tokens, progress=progress))
        # Row i masks residue i, whose true token is ids[i + 1].
        results.append(float(log_probs[torch.arange(len(sequence)), ids[1:-1]].sum()))
    return results


def score_proteins(
    model: nn.Module | ProteinLM,
    tokenizer: ProteinVocabulary | None,
    records: ProteinRecords,
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    max_length: int | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    pack: bool | None = None,
) -> list[dict]:
    """Log-likelihood and perplexity of each protein (see the module docstring for what is
    summed); exact for a causal model (:class:`PerformerForCausalLM`), pseudo-log-likelihood
    for a masked one (:class:`PerformerForMaskedLM`).

    Args:
        model: this package's language model (with its ``tokenizer``) or a
            :class:`~performers.jobs.protein_lm.ProteinLM`.
        records: the proteins: FASTA records, ``(id, sequence)`` pairs, a ``{id: sequence}``
            dict or sequence strings (ids ``seq1``, ``seq2``, ...;
            :func:`~performers.jobs.embedding.protein_pairs`); ids must be unique.
        max_tokens: padded tokens per forward pass.
        max_length: crop to this many tokens, ``<cls>`` and ``<eos>`` included (its first
            ``max_length - 2`` residues); default: whole proteins, but at most the model's
            learned positions — the one rule of :mod:`performers.jobs.cropping`.
        progress: a progress bar over scored residues (stderr).
        device: move the model there first (in place); None: run it where it is.
        pack: a causal model's proteins end to end in rows of ``max_tokens`` real tokens
            (:mod:`performers.jobs.packing`; the same scores up to float rounding); None: pack
            when the model takes packed input (this package's models); False: padded batches.
            Pseudo-log-likelihoods never pack: their batches are masked copies sorted by
            length, nearly free of padding already (:mod:`performers.jobs.pseudo_likelihood`;
            real/padded tokens ≥ 0.997 on samples of 40 to 2,000 corpus proteins at the
            default ``max_tokens``).

    Returns:
        One dict per protein, in input order: ``id``, ``length`` (the protein's residues),
        ``scored_length`` (residues scored, after any crop), ``log_likelihood`` (natural log),
        ``perplexity``, ``terms`` (log-probabilities summed) and ``method`` (``"causal"`` or
        ``"pseudo"``). The list's ``.crop`` (:class:`~performers.jobs.cropping.CropReport`) says
        which proteins were cropped.

    Raises:
        TypeError: proteins in none of the accepted forms, or a model that is no language model.
        PackingError: ``pack=True`` for a model that does not take packed input.
    """
    place_model(model, device)
    if isinstance(model, nn.Module):
        _, is_causal = encoder_of(model)
        if not is_causal and not hasattr(model, "lm_head"):
            raise TypeError("scoring needs a language model (PerformerForMaskedLM or PerformerForCausalLM)")
    lm = as_protein_lm(model, tokenizer)
    pack = resolve_pack(pack, lm)  # refuses pack=True for a Hugging Face model, whatever its head
    whole = protein_pairs(records)
    # The one cropping rule (performers.jobs.cropping): max_length if given, else the learned positions.
    pairs, crop = crop_to_rule(whole, lm.residue_limit, max_length=max_length)
    is_causal = lm.is_causal
    if not is_causal:
        _check_one_token_per_residue(lm, "a pseudo-log-likelihood")
    sequences = [s for _, s in pairs]
    bar = Progress(sum(map(len, sequences)), desc="score", unit="residues", enabled=progress)
    try:
        if is_causal:
            scores = sequence_log_likelihoods(
                lm, None, sequences, max_tokens=max_tokens, progress=bar, pack=pack
            )
        else:
            scores = pseudo_log_likelihoods(lm, None, sequences, max_tokens=max_tokens, progress=bar)
    finally:
        bar.close()
    rows = ReportedRows()
    rows.crop = crop
    for (name, sequence), (_, protein), score in zip(pairs, whole, scores, strict=True):
        # A causal model predicts every token after <cls>: n + 1 with one token per residue.
        terms = len(lm.tokenizer.encode(sequence)) - 1 if is_causal else len(sequence)
        rows.append(
            {
                "id": name,
                "length": len(protein),
                "scored_length": len(sequence),
                "log_likelihood": score,
                "perplexity": math.exp(-score / terms),
                "terms": terms,
                "method": "causal" if is_causal else "pseudo",
            }
        )
    return rows


# ---- variant effects ------------------------------------------------------------------------


def _check_one_token_per_residue(lm: ProteinLM, what: str) -> None:
    if not getattr(lm, "one_token_per_residue", True):
        raise ValueError(
            f"{what} masks one residue at a time, but this model's tokens span several residues "
            "(byte-pair tokens, as ProtGPT2's)"
        )


def check_strategy(lm: ProteinLM, strategy: str | None) -> str:
    """``strategy``, or the model's default (``masked-marginals`` for a masked model,
    ``log-likelihood-ratio`` for a causal one).

    Raises:
        ValueError: an unknown strategy, or one the model cannot compute.
    """
    if strategy is None:
        return "log-likelihood-ratio" if lm.is_causal else "masked-marginals"
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if lm.is_causal and strategy in MASKED_STRATEGIES:
        raise ValueError(
            f"strategy {strategy!r} needs a masked language model; a causal model scores variants "
            "with 'log-likelihood-ratio'"
        )
    if not lm.is_causal and strategy == "log-likelihood-ratio":
        raise ValueError(
            "strategy 'log-likelihood-ratio' needs a causal language model; a masked model scores "
            f"variants with {', '.join(MASKED_STRATEGIES)}"
        )
    if strategy in MASKED_STRATEGIES:
        _check_one_token_per_residue(lm, f"strategy {strategy!r}")
    return strategy


def _residue_id(tokenizer: ProteinVocabulary, letter: str) -> int:
    ids = tokenizer.encode(letter, add_special_tokens=False)
    if len(ids) != 1 or ids[0] == getattr(tokenizer, "unk_id", None):
        raise ValueError(f"residue {letter!r} is not in the model's vocabulary")
    return ids[0]


def _check_length(lm: ProteinLM, name: str, wildtype: str) -> None:
    """Variants are scored on the whole wild type: refuse one beyond the model's positions."""
    if lm.residue_limit is not None and len(wildtype) > lm.residue_limit:
        raise ValueError(
            f"{name} has {len(wildtype)} residues, but the model's learned positions allow at most "
            f"{lm.residue_limit} (<cls> and <eos> take two); variants are scored on the whole protein, "
            "without windows: use a model with rotary positions"
        )


def _check_mutants(wildtype: str, mutants: Sequence[Sequence[Mutation]]) -> None:
    for index, mutations in enumerate(mutants):
        seen: set[int] = set()
        for m in mutations:
            where = f"mutant {index + 1} ({format_mutations(mutations)})"
            if not 1 <= m.position <= len(wildtype):
                raise ValueError(
                    f"{where}: position {m.position} is outside the wild type (1..{len(wildtype)})"
                )
            if wildtype[m.position - 1] != m.wildtype.upper():
                raise ValueError(
                    f"{where}: the wild type has {wildtype[m.position - 1]!r} at position "
                    f"{m.position}, not {m.wildtype!r}"
                )
            if m.position in seen:
                raise ValueError(f"{where}: position {m.position} is mutated twice")
            seen.add(m.position)


def _mutated(wildtype: str, mutations: Sequence[Mutation]) -> str:
    residues = list(wildtype)
    for m in mutations:
        residues[m.position - 1] = m.mutant.upper()
    return "".join(residues)


def _marginal_scores(tables: dict[int, Tensor], tokenizer, mutants) -> list[float]:
    """``Σ log p(mt) − log p(wt)`` over each mutant's positions, ``tables[i]`` the ``(V,)``
    log-probabilities at 0-based residue position ``i``."""
    ids: dict[str, int] = {}  # letter -> id, looked up once per letter

    def code(letter: str) -> int:
        if letter not in ids:
            ids[letter] = _residue_id(tokenizer, letter)
        return ids[letter]

    scores = []
    for mutations in mutants:
        score = 0.0
        for m in mutations:
            table = tables[m.position - 1]
            score += float(table[code(m.mutant)] - table[code(m.wildtype)])
        scores.append(score)
    return scores


def _sequence_scores(lm, strategy, wildtype, mutants, *, max_tokens, progress) -> list[float]:
    """``pseudo-ppl`` / ``log-likelihood-ratio``: a whole-sequence score of each distinct mutant
    minus the wild type's."""
    sequences = list(dict.fromkeys([wildtype] + [_mutated(wildtype, m) for m in mutants if m]))
    if strategy == "pseudo-ppl":
        passes = sum(map(len, sequences))
        bar = Progress(passes, desc="score", unit="passes", enabled=progress)
        try:
            totals = pseudo_log_likelihoods(lm, None, sequences, max_tokens=max_tokens, progress=bar)
        finally:
            bar.close()
    else:
        bar = Progress(sum(map(len, sequences)), desc="score", unit="residues", enabled=progress)
        try:
            # Mutants have the wild type's length: padded batches hold no padding to save.
            totals = sequence_log_likelihoods(
                lm, None, sequences, max_tokens=max_tokens, progress=bar, pack=False
            )
        finally:
            bar.close()
    by_sequence = dict(zip(sequences, totals, strict=True))
    return [by_sequence[_mutated(wildtype, m)] - by_sequence[wildtype] if m else 0.0 for m in mutants]


def score_mutants(
    model: nn.Module | ProteinLM,
    tokenizer: ProteinVocabulary | None,
    wildtype: str,
    mutants: Sequence[Sequence[Mutation]],
    *,
    strategy: str | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: bool = True,
) -> list[float]:
    """The score of each mutant of ``wildtype`` under ``strategy`` (see the module docstring).

    Args:
        model: this package's language model (with its ``tokenizer``) or a
            :class:`~performers.jobs.protein_lm.ProteinLM`.
        wildtype: the wild-type residues (whole: nothing is cropped).
        mutants: each mutant's substitutions, positions 1-based in ``wildtype``; an empty one is
            the wild type (score 0).
        strategy: ``masked-marginals``, ``wt-marginals``, ``pseudo-ppl`` (masked models) or
            ``log-likelihood-ratio`` (causal models); default: the first for a masked model, the
            last for a causal one.
        max_tokens: padded tokens per forward pass.
        progress: a progress bar (stderr).

    Returns:
        One float per mutant, in order; higher = more likely than the wild type.

    Raises:
        ValueError: a strategy the model cannot compute, a mutation outside the wild type, whose
            wild-type letter disagrees with it or whose residue the model does not know, a
            position mutated twice, a wild type too long for learned positions.
    """
    lm = as_protein_lm(model, tokenizer)
    strategy = check_strategy(lm, strategy)
    wildtype = wildtype.upper()
    _check_length(lm, "the wild type", wildtype)
    _check_mutants(wildtype, mutants)
    if strategy in ("pseudo-ppl", "log-likelihood-ratio"):
        return _sequence_scores(lm, strategy, wildtype, mutants, max_tokens=max_tokens, progress=progress)
    positions = sorted({m.position - 1 for mutations in mutants for m in mutations})
    if not positions:
        return [0.0] * len(mutants)
    tables = marginal_log_probs(
        lm, None, wildtype, positions, strategy=strategy, max_tokens=max_tokens, progress=progress
    )
    return _marginal_scores(tables, lm.tokenizer, mutants)


def marginal_log_probs(
    model: nn.Module | ProteinLM,
    tokenizer: ProteinVocabulary | None,
    wildtype: str,
    positions: Sequence[int],
    *,
    strategy: str = "masked-marginals",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: bool = True,
) -> dict[int, Tensor]:
    """The model's log-probabilities ``(V,)`` (at least float32, on the CPU) at each 0-based
    residue position of ``wildtype`` in ``positions``: with that position masked on its own
    (``masked-marginals``: one masked copy of the wild type per position, the copies batched by
    ``max_tokens`` padded tokens) or from one unmasked pass (``wt-marginals``). The wild type is
    taken as it is (checked by the callers)."""
    lm = as_protein_lm(model, tokenizer)
    if strategy not in ("masked-marginals", "wt-marginals"):
        raise ValueError(f"strategy must be 'masked-marginals' or 'wt-marginals', got {strategy!r}")
    wt_ids = _encode(lm.tokenizer, wildtype)
    if strategy == "wt-marginals":
        log_probs = _log_softmax(
            lm.logits(wt_ids[None].to(lm.device), torch.ones_like(wt_ids)[None].to(lm.device))
        )
        return {p: log_probs[0, p + 1].cpu() for p in positions}  # residue p sits after <cls>
    # One masked copy of the wild type per position, masked on its own (ESM).
    bar = Progress(len(positions), desc="score", unit="passes", enabled=progress)
    try:
        rows = masked_log_probs(
            lm, None, [(wt_ids, (p,)) for p in positions], max_tokens=max_tokens, progress=bar
        )
    finally:
        bar.close()
    return {p: row[0] for p, row in zip(positions, rows, strict=True)}


def variant_effects(
    model: nn.Module | ProteinLM,
    tokenizer: ProteinVocabulary | None,
    wildtype: FastaRecord | tuple[str, str] | str,
    records: ProteinRecords,
    *,
    strategy: str | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: bool = True,
) -> list[dict]:
    """Zero-shot score of each variant *sequence* against ``wildtype`` (substitutions only), by
    :func:`score_mutants` with ``strategy`` (default: ``masked-marginals`` for a masked model,
    ``log-likelihood-ratio`` for a causal one).

    Returns:
        One dict per variant, in input order: ``id``, ``mutations`` (e.g. ``"V39A:D40G"``,
        1-based), ``num_mutations``, ``score`` and ``method`` (the strategy).

    Raises:
        ValueError: a variant of another length than the wild type (naming it), a repeated id,
            a wild type too long for learned positions, a strategy the model cannot compute.
    """
    if isinstance(wildtype, str):
        wildtype = ("wildtype", wildtype)
    ((wt_name, wt_sequence),) = protein_pairs([wildtype])
    wt_sequence = wt_sequence.upper()
    lm = as_protein_lm(model, tokenizer)
    strategy = check_strategy(lm, strategy)
    _check_length(lm, f"the wild type {wt_name!r}", wt_sequence)
    pairs = protein_pairs(records)
    mutations = [find_mutations(wt_sequence, s, name=f"variant {name!r}") for name, s in pairs]
    scores = score_mutants(
        lm, None, wt_sequence, mutations, strategy=strategy, max_tokens=max_tokens, progress=progress
    )
    return [
        {
            "id": name,
            "mutations": format_mutations(m),
            "num_mutations": len(m),
            "score": score,
            "method": strategy,
        }
        for (name, _), m, score in zip(pairs, mutations, scores, strict=True)
    ]


# ---- ProteinGym DMS files -------------------------------------------------------------------


class DmsError(InputError):
    """A DMS file that cannot be scored: a missing column, a malformed mutant, a mutant that
    disagrees with the wild type or lies outside it, a target that is not a number (the message
    names the file and its line)."""


# One substitution: wild-type letter, position (the assay's numbering), mutant letter.
_MUTATION = re.compile(r"([A-Za-z])(-?\d+)([A-Za-z])")
# A row that is the wild type itself (no substitution).
WILDTYPE_NAMES = ("", "wt", "_wt", "wildtype")


@dataclass
class DmsAssay:
    """A DMS file read against its wild type.

    Attributes:
        path: the file.
        columns: its header.
        rows: its rows as read (strings), in order.
        mutants: each row's substitutions, positions 1-based in the wild type (the offset
            applied); empty for a wild-type row.
        targets: each row's target (None where empty or NaN), or None without a target column.
        mutation_col, target_col: the columns read (``target_col`` None without targets).
        offset: the number the assay gives the wild type's first residue.
        lines: the line of the file each row is on (its last, for a row with a quoted line break).
    """

    path: str
    columns: list[str]
    rows: list[dict[str, str]]
    mutants: list[list[Mutation]]
    targets: list[float | None] | None
    mutation_col: str
    target_col: str | None
    offset: int
    lines: list[int]

    def where(self, index: int) -> str:
        """``"FILE line N (mutant 'A12G')"`` of row ``index``."""
        text = self.rows[index][self.mutation_col]
        return f"{self.path} line {self.lines[index]} ({self.mutation_col} {text!r})"


def _parse_dms_mutant(text: str, wildtype: str, offset: int, where: str) -> list[Mutation]:
    if text.strip().lower() in WILDTYPE_NAMES:
        return []
    mutations: list[Mutation] = []
    seen: set[int] = set()
    for word in text.strip().split(":"):
        match = _MUTATION.fullmatch(word.strip())
        if match is None:
            raise DmsError(
                f"{where}: {word!r} is not a substitution of the form A12G (wild-type letter, "
                "position, mutant letter; several joined by ':')"
            )
        wt, number, mt = match.group(1).upper(), int(match.group(2)), match.group(3).upper()
        position = number - offset + 1  # 1-based in the wild type
        if not 1 <= position <= len(wildtype):
            raise DmsError(
                f"{where}: position {number} is outside the wild type (its {len(wildtype)} residues "
                f"are numbered {offset}..{offset + len(wildtype) - 1} with --offset {offset})"
            )
        if wildtype[position - 1] != wt:
            raise DmsError(
                f"{where}: the wild type has {wildtype[position - 1]!r} at position {number}, not "
                f"{wt!r} (--offset {offset} numbers its first residue)"
            )
        if position in seen:
            raise DmsError(f"{where}: position {number} is mutated twice")
        seen.add(position)
        mutations.append(Mutation(position, wt, mt))
    return mutations


def _parse_target(value: str, where: str) -> float | None:
    if value.strip() == "":
        return None
    try:
        target = float(value)
    except ValueError:
        raise DmsError(f"{where}: target {value!r} is not a number") from None
    return None if math.isnan(target) else target


def read_dms(
    path: str | Path,
    wildtype: str,
    *,
    mutation_col: str = "mutant",
    target_col: str | None = "DMS_score",
    offset: int = 1,
    require_target: bool = False,
) -> DmsAssay:
    """Read a ProteinGym-style DMS CSV against ``wildtype``.

    Args:
        path: a CSV with a header; ``mutation_col`` holds entries such as ``A12G`` or
            ``A12G:D15E`` (an empty entry, ``WT`` or ``_wt`` is the wild type itself).
        wildtype: the wild-type residues.
        mutation_col: the column of mutants.
        target_col: the column of measured fitness (higher = fitter); a file without it has no
            targets, unless ``require_target``.
        offset: the number of the wild type's first residue in the mutants (ESM's
            ``--offset-idx``; 1 when the assay numbers from the start of ``wildtype``).
        require_target: refuse a file without ``target_col``.

    Raises:
        DmsError: a missing column, a mutant that is malformed, outside the wild type, whose
            wild-type letter differs from it or that mutates a position twice, a target that is
            not a number (naming the file and the line), or a file without rows.
        OSError: the file cannot be read.
    """
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise DmsError(f"offset must be an int, got {offset!r}")
    wildtype = wildtype.upper()
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        if mutation_col not in columns:
            raise DmsError(
                f"{path}: no column {mutation_col!r} (--mutation-col); its columns are "
                f"{', '.join(columns) or 'none'}"
            )
        if target_col is not None and target_col not in columns:
            if require_target:
                raise DmsError(
                    f"{path}: no column {target_col!r} (--target-col); its columns are {', '.join(columns)}"
                )
            target_col = None
        rows, mutants, targets, lines = [], [], [], []
        for row in reader:
            text = row[mutation_col] or ""
            where = f"{path} line {reader.line_num} ({mutation_col} {text!r})"
            lines.append(reader.line_num)
            mutants.append(_parse_dms_mutant(text, wildtype, offset, where))
            if target_col is not None:
                targets.append(_parse_target(row[target_col] or "", where))
            rows.append(row)
    if not rows:
        raise DmsError(f"{path}: no rows")
    return DmsAssay(
        str(path),
        columns,
        rows,
        mutants,
        targets if target_col is not None else None,
        mutation_col,
        target_col,
        offset,
        lines,
    )


@dataclass
class DmsScores:
    """Scores of an assay: ``scores`` one per row; ``spearman`` and ``count`` (rows with a
    target) when the assay has targets, else None."""

    assay: DmsAssay
    scores: list[float]
    strategy: str
    spearman: float | None
    count: int | None


def dms_spearman(scores: Sequence[float], targets: Sequence[float | None]) -> tuple[float, int]:
    """Spearman's rank correlation (ties at their average rank) of ``scores`` and ``targets``
    over the rows that have a target, and how many they are (NaN below two, or when either side
    is constant)."""
    pairs = [(s, t) for s, t in zip(scores, targets, strict=True) if t is not None]
    if len(pairs) < 2:
        return math.nan, len(pairs)
    x = torch.tensor([s for s, _ in pairs], dtype=torch.float64)
    y = torch.tensor([t for _, t in pairs], dtype=torch.float64)
    return spearman(x, y), len(pairs)


def score_dms(
    model: nn.Module | ProteinLM,
    tokenizer: ProteinVocabulary | None,
    wildtype: str,
    path: str | Path,
    *,
    mutation_col: str = "mutant",
    target_col: str | None = "DMS_score",
    offset: int = 1,
    require_target: bool = False,
    strategy: str | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> DmsScores:
    """Score every row of a ProteinGym DMS file (:func:`read_dms`, which takes ``mutation_col``,
    ``target_col``, ``offset`` and ``require_target``) with :func:`score_mutants`, and, when it
    has targets, the Spearman correlation of the scores with them. ``device``: move the model
    there first (in place); None: run it where it is.

    Raises:
        DmsError: as :func:`read_dms`.
        ValueError: as :func:`score_mutants`.
    """
    place_model(model, device)
    lm = as_protein_lm(model, tokenizer)
    strategy = check_strategy(lm, strategy)
    assay = read_dms(
        path,
        wildtype,
        mutation_col=mutation_col,
        target_col=target_col,
        offset=offset,
        require_target=require_target,
    )
    for index, mutations in enumerate(assay.mutants):
        for m in mutations:
            try:
                _residue_id(lm.tokenizer, m.mutant)
            except ValueError as error:
                raise DmsError(f"{assay.where(index)}: {error}") from None
    scores = score_mutants(
        lm, None, wildtype, assay.mutants, strategy=strategy, max_tokens=max_tokens, progress=progress
    )
    rho, count = (None, None) if assay.targets is None else dms_spearman(scores, assay.targets)
    return DmsScores(assay, scores, strategy, rho, count)


def write_dms_scores(result: DmsScores, path: str | Path, *, metadata: dict | None = None) -> list[Path]:
    """Write the assay's rows with a ``score`` column added (atomically), and, when it has
    targets, ``<path stem>.spearman.json`` beside it (``spearman``, ``count``, ``rows``,
    ``strategy``, the columns read, the offset and ``metadata``). Returns the paths written.

    Raises:
        DmsError: the assay already has a ``score`` column.
    """
    if "score" in result.assay.columns:
        raise DmsError(f"{result.assay.path}: already has a column 'score'; rename it first")
    path = Path(path)
    rows = [{**row, "score": score} for row, score in zip(result.assay.rows, result.scores, strict=True)]
    written = [write_csv(rows, path)]
    if result.spearman is not None:
        summary = {
            "spearman": result.spearman,
            "count": result.count,
            "rows": len(result.scores),
            "strategy": result.strategy,
            "assay": result.assay.path,
            "mutation_col": result.assay.mutation_col,
            "target_col": result.assay.target_col,
            "offset": result.assay.offset,
            **(metadata or {}),
        }
        side = path.with_suffix(".spearman.json")
        text = json.dumps(summary, indent=2) + "\n"
        atomic_write(side, lambda tmp: tmp.write_text(text))
        written.append(side)
    return written
