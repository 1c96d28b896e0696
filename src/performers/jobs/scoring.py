"""Log-likelihoods of proteins and zero-shot variant effects from a trained model.

Per-sequence scores (:func:`score_proteins`), for a protein of ``n`` residues encoded as
``[<cls>, r_1 .. r_n, <eos>]``:

* **causal models** — the exact log-likelihood ``Σ_{t=1}^{n+1} log p(x_t | x_<t)``: the ``n``
  residues and the ``<eos>`` that ends the protein, each predicted from its prefix (``<cls>``
  is given, not predicted); ``n + 1`` terms, one forward pass per protein (batched).
* **masked models** — the pseudo-log-likelihood ``Σ_{i=1}^{n} log p(r_i | x with r_i masked)``
  (Salazar et al. 2020): ``n`` masked copies of the protein, each with one residue replaced
  by ``<mask>``, i.e. ``n`` forward passes' worth of ``n + 2`` tokens per protein —
  ``O(n²·M·D)`` per layer with FAVOR+ (``O(n³·D)`` with exact attention). The copies are
  batched by the token budget.

Perplexity is ``exp(−log_likelihood / terms)``, ``terms`` being ``n + 1`` (causal) or ``n``
(pseudo-perplexity).

Variant effects (:func:`variant_effects`) compare each variant with a wild type of the same
length (substitutions only):

* **masked models** — masked-marginal log-odds (Meier et al. 2021): mask every mutated position
  of the *wild type* in one pass and sum ``log p(mut_i) − log p(wt_i)`` over the mutated
  positions (variants mutating the same positions share that pass).
* **causal models** — log-likelihood ratio ``LL(variant) − LL(wild type)``.

A variant identical to the wild type scores exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from performers.jobs.embedding import (
    DEFAULT_MAX_TOKENS,
    SPECIAL_TOKENS_PER_PROTEIN,
    Progress,
    ProteinRecords,
    crop_proteins,
    encoder_of,
    protein_pairs,
    token_batches,
)
from performers.proteins import FastaRecord, ProteinTokenizer
from performers.training import evaluation_mode, model_device

__all__ = [
    "Mutation",
    "find_mutations",
    "format_mutations",
    "masked_log_probs",
    "parse_mutations",
    "score_proteins",
    "sequence_log_likelihoods",
    "variant_effects",
]


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


def parse_mutations(text: str, wildtype: str | None = None) -> list[Mutation]:
    """Parse ``"V39A:D40G"`` (also ``,``/``;``/space separated); empty text is no mutation.

    With ``wildtype``, each position must exist and hold the stated wild-type residue.

    Raises:
        ValueError: a malformed mutation or one that disagrees with ``wildtype``, naming it.
    """
    mutations = []
    for word in text.replace(",", ":").replace(";", ":").replace(" ", ":").split(":"):
        if not word:
            continue
        position = word[1:-1]
        if len(word) < 3 or not word[0].isalpha() or not word[-1].isalpha() or not position.isdigit():
            raise ValueError(
                f"mutation {word!r} is not of the form V39A (wild type, 1-based position, mutant)"
            )
        mutation = Mutation(int(position), word[0].upper(), word[-1].upper())
        if mutation.position < 1:
            raise ValueError(f"mutation {word!r}: positions are 1-based")
        if wildtype is not None:
            if mutation.position > len(wildtype):
                raise ValueError(f"mutation {word!r}: the wild type has {len(wildtype)} residues")
            if wildtype[mutation.position - 1].upper() != mutation.wildtype:
                raise ValueError(
                    f"mutation {word!r}: the wild type has {wildtype[mutation.position - 1]!r} "
                    f"at position {mutation.position}"
                )
        mutations.append(mutation)
    return mutations


def _log_softmax(logits: Tensor) -> Tensor:
    # At least float32: half-precision log-probabilities would lose the small differences.
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


def sequence_log_likelihoods(
    model: nn.Module,
    tokenizer: ProteinTokenizer,
    sequences: Sequence[str],
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: Progress | None = None,
) -> list[float]:
    """Exact log-likelihood of each sequence under a causal model: ``Σ log p`` of the
    residues and ``<eos>`` given their prefixes (``n + 1`` terms; see the module docstring).
    Batched by ``max_tokens`` padded tokens; no cropping here."""
    _, is_causal = encoder_of(model)
    if not is_causal:
        raise TypeError(f"exact log-likelihoods need a causal model, got {type(model).__name__}")
    device = model_device(model)
    lengths = [len(s) + SPECIAL_TOKENS_PER_PROTEIN for s in sequences]
    results = [0.0] * len(sequences)
    with evaluation_mode(model):
        for batch in token_batches(lengths, max_tokens):
            ids, mask = tokenizer.batch_encode([sequences[i] for i in batch])
            ids, mask = ids.to(device), mask.to(device)
            log_probs = _log_softmax(model(ids, mask).logits[:, :-1])  # position t predicts t + 1
            targets = ids[:, 1:]
            picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, L - 1)
            picked = picked.masked_fill(mask[:, 1:] == 0, 0.0)  # padding is not predicted
            for row, index in enumerate(batch):
                results[index] = float(picked[row].sum())
            if progress is not None:
                progress.update(sum(len(sequences[i]) for i in batch))
    return results


def masked_log_probs(
    model: nn.Module,
    tokenizer: ProteinTokenizer,
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
    device = model_device(model)
    lengths = [len(ids) for ids, _ in jobs]
    results: list[Tensor | None] = [None] * len(jobs)
    with evaluation_mode(model):
        for batch in token_batches(lengths, max_tokens):
            longest = lengths[batch[0]]  # token_batches puts the longest first
            ids = torch.full((len(batch), longest), tokenizer.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), longest), dtype=torch.long)
            for row, index in enumerate(batch):
                ids[row, : lengths[index]] = jobs[index][0]
                mask[row, : lengths[index]] = 1
            rows = torch.tensor([r for r, i in enumerate(batch) for _ in jobs[i][1]], dtype=torch.long)
            cols = torch.tensor([p + 1 for i in batch for p in jobs[i][1]], dtype=torch.long)  # after <cls>
            ids[rows, cols] = tokenizer.mask_id
            logits = model(ids.to(device), mask.to(device)).logits
            log_probs = _log_softmax(logits[rows.to(device), cols.to(device)]).cpu()
            start = 0
            for index in batch:
                count = len(jobs[index][1])
                results[index] = log_probs[start : start + count]
                start += count
            if progress is not None:
                progress.update(len(batch))
    return results


def _encode(tokenizer: ProteinTokenizer, sequence: str) -> Tensor:
    return torch.tensor(tokenizer.encode(sequence), dtype=torch.long)


def _pseudo_log_likelihoods(model, tokenizer, sequences, *, max_tokens, progress) -> list[float]:
    results = []
    for sequence in sequences:  # one protein at a time: its n copies are never all in memory
        ids = _encode(tokenizer, sequence)
        jobs = [(ids, (i,)) for i in range(len(sequence))]
        log_probs = torch.cat(
            masked_log_probs(model, tokenizer, jobs, max_tokens=max_tokens, progress=progress)
        )
        # Row i masks residue i, whose true token is ids[i + 1].
        results.append(float(log_probs[torch.arange(len(sequence)), ids[1:-1]].sum()))
    return results


def score_proteins(
    model: nn.Module,
    tokenizer: ProteinTokenizer,
    records: ProteinRecords,
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    max_length: int | None = None,
    progress: bool = True,
) -> list[dict]:
    """Log-likelihood and perplexity of each protein (see the module docstring for what is
    summed); exact for a :class:`PerformerForCausalLM`, pseudo-log-likelihood for a
    :class:`PerformerForMaskedLM`.

    Args:
        records: :class:`FastaRecord` objects or ``(id, sequence)`` pairs; ids must be unique.
        max_tokens: padded tokens per forward pass.
        max_length: crop to this many tokens, ``<cls>`` and ``<eos>`` included (as
            :func:`~performers.jobs.embedding.embed_proteins`).
        progress: a progress bar over scored residues (stderr).

    Returns:
        One dict per protein, in input order: ``id``, ``length`` (residues scored),
        ``log_likelihood`` (natural log), ``perplexity``, ``terms`` (log-probabilities summed)
        and ``method`` (``"causal"`` or ``"pseudo"``).
    """
    _, is_causal = encoder_of(model)
    if not is_causal and not hasattr(model, "lm_head"):
        raise TypeError("scoring needs a language model (PerformerForMaskedLM or PerformerForCausalLM)")
    pairs, _ = crop_proteins(protein_pairs(records), model, max_length)
    sequences = [s for _, s in pairs]
    bar = Progress(sum(map(len, sequences)), desc="score", unit="residues", enabled=progress)
    try:
        if is_causal:
            scores = sequence_log_likelihoods(
                model, tokenizer, sequences, max_tokens=max_tokens, progress=bar
            )
        else:
            scores = _pseudo_log_likelihoods(model, tokenizer, sequences, max_tokens=max_tokens, progress=bar)
    finally:
        bar.close()
    rows = []
    for (name, sequence), score in zip(pairs, scores, strict=True):
        terms = len(sequence) + 1 if is_causal else len(sequence)
        rows.append(
            {
                "id": name,
                "length": len(sequence),
                "log_likelihood": score,
                "perplexity": math.exp(-score / terms),
                "terms": terms,
                "method": "causal" if is_causal else "pseudo",
            }
        )
    return rows


def variant_effects(
    model: nn.Module,
    tokenizer: ProteinTokenizer,
    wildtype: FastaRecord | tuple[str, str] | str,
    records: ProteinRecords,
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: bool = True,
) -> list[dict]:
    """Zero-shot score of each variant against ``wildtype`` (higher = more likely than the
    wild type): masked-marginal log-odds for a masked model, ``LL(variant) − LL(wt)`` for a
    causal one (see the module docstring).

    Returns:
        One dict per variant, in input order: ``id``, ``mutations`` (e.g. ``"V39A:D40G"``,
        1-based), ``num_mutations``, ``score`` and ``method`` (``"masked-marginal"`` or
        ``"log-likelihood-ratio"``).

    Raises:
        ValueError: a variant of another length than the wild type (naming it), a repeated id,
            a wild type too long for learned positions.
    """
    if isinstance(wildtype, str):
        wildtype = ("wildtype", wildtype)
    ((wt_name, wt_sequence),) = protein_pairs([wildtype])
    wt_sequence = wt_sequence.upper()
    _, is_causal = encoder_of(model)
    crop_proteins([(wt_name, wt_sequence)], model, None)  # the position limit, naming the wild type
    pairs = protein_pairs(records)
    mutations = [find_mutations(wt_sequence, s, name=f"variant {name!r}") for name, s in pairs]
    scores = [0.0] * len(pairs)  # no mutation: 0 by definition, no forward pass
    mutated = [i for i, m in enumerate(mutations) if m]
    if is_causal:
        sequences = [wt_sequence] + [pairs[i][1] for i in mutated]
        bar = Progress(sum(map(len, sequences)), desc="score", unit="residues", enabled=progress)
        try:
            likelihoods = sequence_log_likelihoods(
                model, tokenizer, sequences, max_tokens=max_tokens, progress=bar
            )
        finally:
            bar.close()
        for i, likelihood in zip(mutated, likelihoods[1:], strict=True):
            scores[i] = likelihood - likelihoods[0]
    else:
        # One masked copy of the wild type per distinct set of mutated positions.
        wt_ids = _encode(tokenizer, wt_sequence)
        position_sets = sorted({tuple(m.position - 1 for m in mutations[i]) for i in mutated})
        bar = Progress(len(position_sets), desc="score", unit="passes", enabled=progress)
        try:
            log_probs = masked_log_probs(
                model,
                tokenizer,
                [(wt_ids, p) for p in position_sets],
                max_tokens=max_tokens,
                progress=bar,
            )
        finally:
            bar.close()
        by_positions = dict(zip(position_sets, log_probs, strict=True))
        for i in mutated:
            table = by_positions[tuple(m.position - 1 for m in mutations[i])]
            mut = tokenizer.encode("".join(m.mutant for m in mutations[i]), add_special_tokens=False)
            wt = tokenizer.encode("".join(m.wildtype for m in mutations[i]), add_special_tokens=False)
            rows = torch.arange(len(mut))
            scores[i] = float((table[rows, mut] - table[rows, wt]).sum())
    return [
        {
            "id": name,
            "mutations": format_mutations(m),
            "num_mutations": len(m),
            "score": score,
            "method": "log-likelihood-ratio" if is_causal else "masked-marginal",
        }
        for (name, _), m, score in zip(pairs, mutations, scores, strict=True)
    ]
