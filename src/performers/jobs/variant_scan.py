"""Variants of one wild type without writing their sequences: a list of mutants
(``A23G,L5P:L11W``) and the site-saturation scan (every single substitution), with the BLOSUM62
baseline of variant effects.

* :func:`score_mutation_list` — the mutants of a text (``,`` between mutants, ``:`` joining
  the substitutions of a multi-mutant), a file of them (:func:`read_mutants_file`) or
  :class:`~performers.jobs.scoring.Mutation` lists, scored by
  :func:`~performers.jobs.scoring.score_mutants` with any strategy the model computes.
* :func:`saturation_scan` — the 19 substitutions to the other standard amino acids at every
  position (or the ``positions`` asked for). A masked model reads them from **one masked
  forward per position** (``masked-marginals``: the wild type with that position masked, the
  copies of all the positions batched by ``max_tokens`` padded tokens) or from one unmasked pass
  (``wt-marginals``): ``score = log p(mt) − log p(wt)`` at the position; a causal model scores
  each single mutant by ``LL(mutant) − LL(wild type)`` (one pass per mutant). The
  :class:`SaturationScan` holds the ``positions × 20`` table (the wild-type cell 0);
  :func:`performers.jobs.heatmap.plot_saturation` draws it.
* :func:`blosum62_scores` — ``Σ BLOSUM62[wt, mt]`` over a mutant's substitutions: what a
  substitution matrix alone predicts, the baseline printed beside a model's Spearman.

Positions are numbered from ``offset`` (the number of the wild type's first residue, as
``--offset``; 1 by default) in texts, ``positions`` and every output; the
:class:`~performers.jobs.scoring.Mutation` objects are 1-based in the wild type.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from performers.jobs.embedding import DEFAULT_MAX_TOKENS
from performers.jobs.protein_lm import ProteinLM, ProteinVocabulary, as_protein_lm
from performers.jobs.scoring import (
    WILDTYPE_NAMES,
    Mutation,
    MutationError,
    _check_length,
    _residue_id,
    apply_mutations,
    check_strategy,
    dms_spearman,
    marginal_log_probs,
    parse_mutations,
    score_mutants,
)
from performers.proteins.fasta import STANDARD_RESIDUES
from performers.proteins.substitution import blosum62

__all__ = [
    "AMINO_ACIDS",
    "SaturationScan",
    "blosum62_scores",
    "blosum62_spearman",
    "parse_mutants",
    "parse_positions",
    "read_mutants_file",
    "saturation_scan",
    "score_mutation_list",
]

# The 20 standard amino acids, the columns of a scan (alphabetical by one-letter code).
AMINO_ACIDS = STANDARD_RESIDUES


def _mutant_name(mutations: Sequence[Mutation], offset: int) -> str:
    if not mutations:
        return "WT"
    return ":".join(f"{m.wildtype}{m.position + offset - 1}{m.mutant}" for m in mutations)


def parse_mutants(text: str, wildtype: str, *, offset: int = 1) -> list[list[Mutation]]:
    """``"A23G,L5P:L11W"`` → two mutants: mutants are separated by ``,`` (or ``;``, spaces, line
    breaks), the substitutions of one joined by ``:``; ``WT`` (or ``_wt``) is the wild type.

    Raises:
        MutationError: a malformed mutant, one outside ``wildtype`` or disagreeing with it, or
            one that mutates a position twice (naming it); no mutant at all.
    """
    words = text.replace(";", ",").replace("\n", ",").replace(" ", ",").replace("\t", ",").split(",")
    mutants = []
    for word in filter(None, (w.strip() for w in words)):
        if word.lower() in WILDTYPE_NAMES:
            mutants.append([])
            continue
        mutations = parse_mutations(word, wildtype, offset=offset)
        apply_mutations(wildtype, mutations, offset=offset)  # a position mutated twice
        mutants.append(mutations)
    if not mutants:
        raise MutationError(f"no mutants in {text!r}: give e.g. A23G,L5P:L11W")
    return mutants


def read_mutants_file(
    path: str | Path, wildtype: str, *, offset: int = 1, column: str = "mutant"
) -> list[list[Mutation]]:
    """The mutants of a file: a CSV whose header has ``column`` (a ProteinGym DMS file, say: the
    other columns are ignored), else plain text with mutants separated by ``,`` or line breaks
    (lines starting with ``#`` are comments).

    Raises:
        MutationError: a malformed or disagreeing mutant (naming the file and its line), or a
            file without mutants.
        OSError: the file cannot be read.
    """
    with open(path, newline="", encoding="utf-8-sig") as handle:
        lines = handle.read().splitlines()
    # (line number, text) of each entry: a CSV's column, or every line of a plain list.
    first = next((n for n, line in enumerate(lines) if line.strip() and not line.startswith("#")), 0)
    if column in next(csv.reader(lines[first : first + 1]), []):
        reader = csv.DictReader(lines[first:])
        entries = [(first + reader.line_num, row[column] or "WT") for row in reader]
    else:
        entries = [(n + 1, line) for n, line in enumerate(lines) if not line.lstrip().startswith("#")]
    mutants: list[list[Mutation]] = []
    for number, text in entries:
        if not text.strip():
            continue
        try:
            mutants += parse_mutants(text, wildtype, offset=offset)
        except MutationError as error:
            raise MutationError(f"{path} line {number}: {error}") from None
    if not mutants:
        raise MutationError(f"{path}: no mutants")
    return mutants


def parse_positions(text: str, length: int, *, offset: int = 1) -> list[int]:
    """``"10-120"`` (also ``"5"`` or ``"1-10,20-30"``) → sorted distinct 1-based positions of a
    wild type of ``length`` residues numbered from ``offset``.

    Raises:
        MutationError: a malformed range, a reversed one, or one outside the wild type.
    """
    last = offset + length - 1
    positions: set[int] = set()
    for word in filter(None, (w.strip() for w in text.split(","))):
        start_text, dash, end_text = word.partition("-")
        if start_text == "" and dash:  # a negative first number, e.g. -5-10
            start_text, dash, end_text = word[1:].partition("-")
            start_text = "-" + start_text
        try:
            start = int(start_text)
            end = int(end_text) if dash else start
        except ValueError:
            raise MutationError(f"positions {word!r}: expected N or N-M, e.g. 10-120") from None
        if end < start:
            raise MutationError(f"positions {word!r}: the range runs backwards")
        if start < offset or end > last:
            raise MutationError(
                f"positions {word!r}: the wild type's {length} residues are numbered {offset}..{last}"
            )
        positions.update(range(start - offset + 1, end - offset + 2))
    if not positions:
        raise MutationError(f"positions {text!r}: no position given")
    return sorted(positions)


def _as_mutants(mutants, wildtype: str, offset: int) -> list[list[Mutation]]:
    if isinstance(mutants, str):
        return parse_mutants(mutants, wildtype, offset=offset)
    result = []
    for mutant in mutants:
        if isinstance(mutant, str):
            result += parse_mutants(mutant, wildtype, offset=offset)
        else:
            mutations = [mutant] if isinstance(mutant, Mutation) else list(mutant)
            apply_mutations(wildtype, mutations, offset=offset)  # checks range, letters, repeats
            result.append(mutations)
    return result


def _row(mutations: Sequence[Mutation], offset: int, score: float) -> dict:
    return {
        "mutant": _mutant_name(mutations, offset),
        "position": ":".join(str(m.position + offset - 1) for m in mutations),
        "wildtype": ":".join(m.wildtype for m in mutations),
        "mutant_aa": ":".join(m.mutant for m in mutations),
        "score": score,
    }


def score_mutation_list(
    model: nn.Module | ProteinLM,
    tokenizer: ProteinVocabulary | None,
    wildtype: str,
    mutants: str | Iterable[str | Sequence[Mutation]],
    *,
    strategy: str | None = None,
    offset: int = 1,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: bool = True,
) -> list[dict]:
    """Score mutants of ``wildtype`` (:func:`~performers.jobs.scoring.score_mutants`).

    Args:
        mutants: ``"A23G,L5P:L11W"`` (:func:`parse_mutants`), a list of such texts, or lists of
            :class:`~performers.jobs.scoring.Mutation` (1-based).
        strategy: as :func:`~performers.jobs.scoring.score_mutants` (default
            ``masked-marginals`` for a masked model, ``log-likelihood-ratio`` for a causal one).
        offset: the number of the wild type's first residue in texts and in the rows.

    Returns:
        One dict per mutant, in order: ``mutant`` (``L5P:L11W``; ``WT`` for none),
        ``position``, ``wildtype`` and ``mutant_aa`` (``:``-joined for a multi-mutant) and
        ``score`` (higher = more likely than the wild type).

    Raises:
        MutationError: a malformed mutant or one that disagrees with ``wildtype``.
        ValueError: as :func:`~performers.jobs.scoring.score_mutants`.
    """
    wildtype = wildtype.upper()
    parsed = _as_mutants(mutants, wildtype, offset)
    scores = score_mutants(
        model, tokenizer, wildtype, parsed, strategy=strategy, max_tokens=max_tokens, progress=progress
    )
    return [_row(m, offset, s) for m, s in zip(parsed, scores, strict=True)]


@dataclass
class SaturationScan:
    """Every single substitution at some positions of a wild type.

    Attributes:
        wildtype: the wild-type residues (upper case).
        positions: the positions scanned, 1-based in ``wildtype``.
        amino_acids: the columns of ``scores`` (:data:`AMINO_ACIDS`).
        scores: ``(len(positions), 20)`` float64: ``scores[i, j]`` the score of the substitution
            to ``amino_acids[j]`` at ``positions[i]``; 0 where that is the wild-type residue.
        strategy: how they were scored.
        offset: the number of the wild type's first residue in :meth:`to_rows` and plots.
    """

    wildtype: str
    positions: list[int]
    amino_acids: str
    scores: Tensor
    strategy: str
    offset: int = 1

    def numbers(self) -> list[int]:
        """The positions as numbered from :attr:`offset`."""
        return [p + self.offset - 1 for p in self.positions]

    def score(self, number: int, amino_acid: str) -> float:
        """The score of the substitution to ``amino_acid`` at position ``number`` (numbered
        from :attr:`offset`)."""
        return float(self.scores[self.numbers().index(number), self.amino_acids.index(amino_acid.upper())])

    def to_rows(self) -> list[dict]:
        """One row per substitution (19 per position, none to the wild-type residue), by position
        then amino acid: ``mutant`` (e.g. ``A23G``), ``position``, ``wildtype``, ``mutant_aa``,
        ``score``."""
        rows = []
        for i, position in enumerate(self.positions):
            wt = self.wildtype[position - 1]
            for j, aa in enumerate(self.amino_acids):
                if aa != wt:
                    rows.append(_row([Mutation(position, wt, aa)], self.offset, float(self.scores[i, j])))
        return rows


def saturation_scan(
    model: nn.Module | ProteinLM,
    tokenizer: ProteinVocabulary | None,
    wildtype: str,
    *,
    positions: str | Iterable[int] | None = None,
    strategy: str | None = None,
    offset: int = 1,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    progress: bool = True,
) -> SaturationScan:
    """Score every substitution to the 20 standard amino acids at ``positions`` of ``wildtype``
    (module docstring): one masked forward per position for ``masked-marginals`` (a masked
    model's default), one unmasked pass for ``wt-marginals``, one pass per mutant for a causal
    model's ``log-likelihood-ratio``.

    Args:
        model: this package's language model (with its ``tokenizer``) or a
            :class:`~performers.jobs.protein_lm.ProteinLM` (a Hugging Face ESM, say).
        wildtype: the residues (whole: nothing is cropped).
        positions: numbers (from ``offset``) or a text such as ``"10-120"``
            (:func:`parse_positions`); default every position.
        strategy: ``masked-marginals`` or ``wt-marginals`` (masked models) or
            ``log-likelihood-ratio`` (causal models); ``pseudo-ppl`` (``L`` passes per mutant)
            is refused.
        offset: the number of the wild type's first residue.

    Raises:
        MutationError: positions outside the wild type or malformed.
        ValueError: a strategy the model cannot compute, a wild type too long for learned
            positions, a wild-type residue the model does not know.
    """
    lm = as_protein_lm(model, tokenizer)
    strategy = check_strategy(lm, strategy)
    if strategy == "pseudo-ppl":
        raise ValueError(
            "a saturation scan with 'pseudo-ppl' would take one pseudo-log-likelihood (L passes) per "
            "mutant; use 'masked-marginals' (one masked pass per position) or 'wt-marginals'"
        )
    wildtype = wildtype.upper()
    _check_length(lm, "the wild type", wildtype)
    if positions is None:
        chosen = list(range(1, len(wildtype) + 1))
    elif isinstance(positions, str):
        chosen = parse_positions(positions, len(wildtype), offset=offset)
    else:
        chosen = parse_positions(",".join(str(int(p)) for p in positions), len(wildtype), offset=offset)
    scores = torch.zeros(len(chosen), len(AMINO_ACIDS), dtype=torch.float64)
    if strategy == "log-likelihood-ratio":
        singles = [[Mutation(p, wildtype[p - 1], aa)] for p in chosen for aa in AMINO_ACIDS]
        kept = [m for m in singles if m[0].mutant != m[0].wildtype]
        values = iter(score_mutants(lm, None, wildtype, kept, strategy=strategy, max_tokens=max_tokens,
                                    progress=progress))  # fmt: skip
        for index, m in enumerate(singles):
            if m[0].mutant != m[0].wildtype:
                scores[index // len(AMINO_ACIDS), index % len(AMINO_ACIDS)] = next(values)
    else:
        tables = marginal_log_probs(
            lm, None, wildtype, [p - 1 for p in chosen], strategy=strategy, max_tokens=max_tokens,
            progress=progress,
        )  # fmt: skip
        columns = torch.tensor([_residue_id(lm.tokenizer, aa) for aa in AMINO_ACIDS])
        for i, p in enumerate(chosen):
            table = tables[p - 1]
            wt = table[_residue_id(lm.tokenizer, wildtype[p - 1])]
            scores[i] = (table[columns] - wt).double()  # the wild type's own cell: exactly 0
    return SaturationScan(wildtype, chosen, AMINO_ACIDS, scores, strategy, offset)


# ---- the BLOSUM62 baseline ------------------------------------------------------------------------


def blosum62_scores(mutants: Sequence[Sequence[Mutation]]) -> list[float | None]:
    """``Σ BLOSUM62[wt, mt]`` over each mutant's substitutions (0 for the wild type itself);
    None for a mutant with a residue outside the 20 standard amino acids (the matrix has none)."""
    matrix = blosum62()
    scores: list[float | None] = []
    for mutations in mutants:
        pairs = [(m.wildtype.upper(), m.mutant.upper()) for m in mutations]
        scores.append(float(sum(matrix[p] for p in pairs)) if all(p in matrix for p in pairs) else None)
    return scores


def blosum62_spearman(
    mutants: Sequence[Sequence[Mutation]], targets: Sequence[float | None]
) -> tuple[float, int]:
    """Spearman's rank correlation of :func:`blosum62_scores` with ``targets`` over the mutants
    that have a target and a BLOSUM62 score, and how many they are (NaN below two)."""
    pairs = [(s, t) for s, t in zip(blosum62_scores(mutants), targets, strict=True) if s is not None]
    if not pairs:
        return math.nan, 0
    return dms_spearman([s for s, _ in pairs], [t for _, t in pairs])
