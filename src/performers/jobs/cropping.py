"""One cropping rule for every protein command (``evaluate``, ``embed``, ``score``) and the
Python functions behind them.

**A protein is read whole** unless

1. **the user asks**: ``max_length=N`` (``--max-length N``) counts tokens, ``<cls>`` and
   ``<eos>`` included, and keeps each protein's first ``N - 2`` residues; ``embed``'s
   ``truncation_length=R`` (``--truncation-length R``, ESM's ``truncation_seq_length``) keeps
   the first ``R`` residues, the same as ``max_length=R + 2``; or
2. **the model cannot read longer**: learned absolute positions stop at
   ``max_position_embeddings``, two of which ``<cls>`` and ``<eos>`` take, so a longer protein
   keeps its first ``max_position_embeddings - 2`` residues. Rotary (or no) positions — this
   package's ``position="rotary"`` models, ESM-2 — have no such limit: nothing is cropped
   (FAVOR+ keeps the cost linear in the length; past the length a model was trained on, its
   outputs are extrapolations).

Asking for more than the model's learned positions hold is an error naming both numbers. A crop
always keeps the protein's start. Whatever was cropped is counted in a :class:`CropReport` —
the commands print its :meth:`~CropReport.messages` (``cropped 12 of 300 proteins to 254
residues (the model's learned positions)``) and the Python functions return it (their
``.crop``), and per-protein outputs give both the true ``length`` and the ``scored_length``.
Proteins with nothing to score (a masked-LM evaluation that masked none of a short protein's
residues) are listed in the report and skipped, never given a row of NaN.

Variant scoring is the exception: a mutation's position means something only in the whole wild
type, so a wild type beyond the learned positions is refused (:mod:`performers.jobs.scoring`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from performers.utils.validation import is_int

__all__ = [
    "LEARNED_POSITIONS",
    "SPECIAL_TOKENS",
    "CropReport",
    "ReportedDict",
    "ReportedRows",
    "crop_plan",
    "crop_to_rule",
    "model_residue_limit",
    "requested_residues",
]

# <cls> and <eos> around the residues of every protein.
SPECIAL_TOKENS = 2
LEARNED_POSITIONS = "the model's learned positions"
# Ids named in a message before "and N more".
SHOWN_IDS = 5


@dataclass(frozen=True)
class CropReport:
    """What a command did to the lengths of its proteins.

    Attributes:
        proteins: how many proteins it was given.
        limit: most residues a protein kept (None: no limit, nothing cropped).
        reason: why there is a limit (``"max_length 256"``, ``"truncation_length 100"`` or
            :data:`LEARNED_POSITIONS`); empty without one.
        cropped: ids of the proteins that lost residues, in input order.
        skipped: ids of the proteins with nothing to score (no output row), in input order.
        skip_reason: why they had nothing to score.
    """

    proteins: int = 0
    limit: int | None = None
    reason: str = ""
    cropped: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    skip_reason: str = ""

    def scored_length(self, length: int) -> int:
        """Residues read of a protein of ``length`` residues."""
        return length if self.limit is None else min(length, self.limit)

    def skipping(self, ids: Sequence[str], reason: str) -> CropReport:
        """This report with ``ids`` listed as skipped for ``reason``."""
        return replace(self, skipped=tuple(ids), skip_reason=reason)

    def messages(self) -> list[str]:
        """One line for the crops and one for the skipped proteins (none when nothing happened)."""
        lines = []
        if self.cropped:
            lines.append(
                f"cropped {len(self.cropped)} of {self.proteins} proteins to {self.limit} residues "
                f"({self.reason}): {_some(self.cropped)}"
            )
        if self.skipped:
            lines.append(
                f"skipped {len(self.skipped)} of {self.proteins} proteins with nothing to score "
                f"({self.skip_reason}): {_some(self.skipped)}"
            )
        return lines

    def to_dict(self) -> dict[str, Any]:
        """JSON-able counts and ids (for ``results.json``)."""
        return {
            "proteins": self.proteins,
            "limit": self.limit,
            "reason": self.reason or None,
            "cropped": len(self.cropped),
            "cropped_ids": list(self.cropped),
            "skipped": len(self.skipped),
            "skipped_ids": list(self.skipped),
            "skip_reason": self.skip_reason or None,
        }


def _some(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:SHOWN_IDS])
    return shown if len(ids) <= SHOWN_IDS else f"{shown} and {len(ids) - SHOWN_IDS} more"


class ReportedDict(dict):
    """A ``dict`` (the usual result of a function) that also carries its :class:`CropReport`
    as ``.crop``."""

    crop: CropReport = CropReport()


class ReportedRows(list):
    """A ``list`` of rows (the usual result of a function) that also carries its
    :class:`CropReport` as ``.crop``."""

    crop: CropReport = CropReport()


def model_residue_limit(model: Any) -> int | None:
    """Most residues one protein may have in ``model`` (None: no limit).

    ``model``: a :class:`~performers.jobs.protein_lm.ProteinLM` (its ``residue_limit``: a Hugging
    Face model's learned positions, None for rotary ESM) or a model of this package (learned
    positions: ``max_position_embeddings - 2``; rotary or none: None).
    """
    if hasattr(model, "residue_limit"):
        return model.residue_limit
    config = model.config
    if config.position != "learned":
        return None
    return config.max_position_embeddings - SPECIAL_TOKENS


def requested_residues(
    limit: int | None, *, max_length: int | None = None, truncation_length: int | None = None
) -> int | None:
    """The residues the user asked to keep (None: whole proteins), checked against the model's
    ``limit`` (residues; None: no limit).

    Raises:
        ValueError: both given, ``max_length`` below 3 or ``truncation_length`` below 1 (or not
            ints), or a request beyond ``limit``, naming both numbers.
    """
    if max_length is not None and truncation_length is not None:
        raise ValueError(
            f"max_length {max_length} (tokens) and truncation_length {truncation_length} (residues) "
            "ask for the same crop; give one"
        )
    if max_length is not None:
        if not is_int(max_length) or max_length < 3:
            raise ValueError(
                f"max_length must be an int >= 3 (<cls>, one residue, <eos>), got {max_length!r}"
            )
        if limit is not None and max_length - SPECIAL_TOKENS > limit:
            raise ValueError(
                f"max_length {max_length} exceeds the model's maximum length {limit + SPECIAL_TOKENS} "
                f"(its learned positions: {limit} residues, <cls> and <eos>); omit it to crop there"
            )
        return max_length - SPECIAL_TOKENS
    if truncation_length is not None:
        if not is_int(truncation_length) or truncation_length < 1:
            raise ValueError(f"truncation_length must be an int >= 1 (residues), got {truncation_length!r}")
        if limit is not None and truncation_length > limit:
            raise ValueError(
                f"truncation_length {truncation_length} exceeds the {limit} residues the model's "
                "learned positions allow; omit it to crop there"
            )
        return truncation_length
    return None


def crop_plan(
    ids: Sequence[str],
    lengths: Sequence[int],
    limit: int | None,
    *,
    max_length: int | None = None,
    truncation_length: int | None = None,
) -> CropReport:
    """THE rule (module docstring) for proteins ``ids`` of ``lengths`` residues in a model that
    holds at most ``limit`` residues (:func:`model_residue_limit`; None: any length).

    Raises:
        ValueError: a bad or too large ``max_length`` / ``truncation_length``
            (:func:`requested_residues`).
    """
    asked = requested_residues(limit, max_length=max_length, truncation_length=truncation_length)
    if asked is not None:
        keep = asked
        reason = f"max_length {max_length}" if max_length is not None else f"truncation_length {asked}"
    elif limit is not None:
        keep, reason = limit, LEARNED_POSITIONS
    else:
        return CropReport(proteins=len(lengths))
    cropped = tuple(name for name, length in zip(ids, lengths, strict=True) if length > keep)
    return CropReport(proteins=len(lengths), limit=keep, reason=reason, cropped=cropped)


def crop_to_rule(
    pairs: Sequence[tuple[str, str]],
    limit: int | None,
    *,
    max_length: int | None = None,
    truncation_length: int | None = None,
) -> tuple[list[tuple[str, str]], CropReport]:
    """``(id, sequence)`` pairs cropped by :func:`crop_plan` (each keeps its first
    ``report.limit`` residues), and the report."""
    report = crop_plan(
        [name for name, _ in pairs],
        [len(sequence) for _, sequence in pairs],
        limit,
        max_length=max_length,
        truncation_length=truncation_length,
    )
    if report.limit is None:
        return list(pairs), report
    return [(name, sequence[: report.limit]) for name, sequence in pairs], report
