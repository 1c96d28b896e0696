"""Labelled protein data in FLIP's FASTA conventions, for fine-tuning.

* **Per-residue classification** (:class:`ResidueLabels`): a FASTA of sequences and a FASTA of
  labels with the same ids, one label character per residue (FLIP's secondary structure
  ``H/E/C``, conservation ``1``…``9``), optionally a FASTA mask (``1`` = scored, ``0`` = not,
  e.g. unresolved residues). The label file's headers carry the split
  (``SET=train|test VALIDATION=True|False``, or ``split=...``).
* **Sequence-level regression** (:class:`SequenceTargets`): one FASTA whose headers carry
  ``TARGET=<float>`` and the split (FLIP's GB1 fitness).

Both give examples and batches for :class:`performers.training.Trainer` (``task="tokens"`` and
``task="regression"``). Residues beyond ``max_length − 2`` are cropped at the start and their
labels dropped. :data:`SHIPPED_TASKS` names the FLIP sets shipped with the package.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from performers.proteins.data import pad_batch, split_of
from performers.proteins.fasta import read_fasta
from performers.proteins.tokenizer import ProteinTokenizer
from performers.utils import IGNORE_INDEX, shipped_data

__all__ = [
    "SHIPPED_TASKS",
    "LabelledExamples",
    "ResidueLabels",
    "SequenceTargets",
    "load_shipped_task",
]


@dataclass
class ResidueLabels:
    """Per-residue labels of one split: ``classes[k]`` is the label character of class ``k``.

    ``scored[i][t]`` is ``"1"`` where residue ``t`` of protein ``i`` counts (loss and accuracy)
    and ``"0"`` where it does not; without a mask file every residue counts.
    """

    ids: list[str]
    sequences: list[str]
    labels: list[str]
    scored: list[str]
    classes: str

    kind = "tokens"

    @classmethod
    def load(
        cls,
        sequences: str | Path,
        labels: str | Path,
        *,
        split: str,
        mask: str | Path | None = None,
        classes: str | None = None,
        limit: int | None = None,
    ) -> ResidueLabels:
        """The labelled proteins of ``split`` (the first ``limit``), in the label file's order.

        ``classes``: the label characters in class order (default: those of the label file,
        sorted); a label outside them is an error naming file, line and column. Proteins of
        the sequence file without a label record are not used.

        Raises:
            ValueError: a label record without sequence, or sequence, labels and mask of
                different lengths (naming the record and the files).
        """
        if classes is None:
            classes = "".join(
                sorted({c for r in read_fasta(labels, alphabet=_PRINTABLE) for c in r.sequence})
            )
        chosen = [r for r in read_fasta(labels, alphabet=classes) if split_of(r) == split][:limit]
        wanted = {r.id for r in chosen}
        residues = {r.id: r.sequence for r in read_fasta(sequences) if r.id in wanted}
        masks = (
            {}
            if mask is None
            else {r.id: r.sequence for r in read_fasta(mask, alphabet="01") if r.id in wanted}
        )
        out = cls([], [], [], [], classes)
        for record in chosen:
            if record.id not in residues:
                raise ValueError(f"{labels}: record {record.id!r} has no sequence in {sequences}")
            sequence = residues[record.id]
            if mask is None:
                scored = "1" * len(sequence)
            elif record.id in masks:
                scored = masks[record.id]
            else:
                raise ValueError(f"{labels}: record {record.id!r} has no mask in {mask}")
            if not len(sequence) == len(record.sequence) == len(scored):
                raise ValueError(
                    f"{labels}: record {record.id!r} has sequence, labels and mask of different lengths "
                    f"({len(sequence)}, {len(record.sequence)}, {len(scored)})"
                )
            out.ids.append(record.id)
            out.sequences.append(sequence)
            out.labels.append(record.sequence)
            out.scored.append(scored)
        return out

    def __len__(self) -> int:
        return len(self.sequences)

    def batch(
        self, indices: Sequence[int], tokenizer: ProteinTokenizer, max_length: int
    ) -> dict[str, Tensor]:
        """``input_ids``, ``attention_mask``, ``labels`` ``(B, L)``; labels ignored where not scored."""
        room = max_length - 2
        ids, attention = tokenizer.batch_encode([self.sequences[i][:room] for i in indices])
        labels = torch.full_like(ids, IGNORE_INDEX)
        index = {c: k for k, c in enumerate(self.classes)}
        for row, i in enumerate(indices):
            for position, (label, scored) in enumerate(
                zip(self.labels[i][:room], self.scored[i][:room], strict=True)
            ):
                if scored == "1":
                    labels[row, position + 1] = index[label]  # +1: after <cls>
        return {"input_ids": ids, "attention_mask": attention, "labels": labels}


@dataclass
class SequenceTargets:
    """Sequences of one split with one real-valued target each (``TARGET=`` in the header)."""

    ids: list[str]
    sequences: list[str]
    targets: list[float]

    kind = "regression"

    @classmethod
    def load(cls, path: str | Path, *, split: str, limit: int | None = None) -> SequenceTargets:
        """The records of ``split`` (the first ``limit``) of a FASTA with ``TARGET=`` headers.

        Raises:
            ValueError: a record without ``TARGET=`` or with a value that is not a finite number.
        """
        out = cls([], [], [])
        for record in read_fasta(path):
            if split_of(record) != split:
                continue
            text = record.fields.get("TARGET")
            try:
                target = float(text) if text is not None else math.nan
            except ValueError:
                target = math.nan
            if not math.isfinite(target):
                raise ValueError(f"{path}: record {record.id!r} needs TARGET=<finite number>, got {text!r}")
            out.ids.append(record.id)
            out.sequences.append(record.sequence)
            out.targets.append(target)
            if limit is not None and len(out.ids) >= limit:
                break
        return out

    def __len__(self) -> int:
        return len(self.sequences)

    def batch(
        self, indices: Sequence[int], tokenizer: ProteinTokenizer, max_length: int
    ) -> dict[str, Tensor]:
        """``input_ids``, ``attention_mask`` ``(B, L)`` and ``targets`` ``(B,)`` (float64)."""
        ids, attention = tokenizer.batch_encode([self.sequences[i][: max_length - 2] for i in indices])
        targets = torch.tensor([self.targets[i] for i in indices], dtype=torch.float64)
        return {"input_ids": ids, "attention_mask": attention, "targets": targets}


class LabelledExamples:
    """:class:`ResidueLabels` or :class:`SequenceTargets` as training examples (no randomness:
    each protein cropped at its start to ``max_length`` tokens) and evaluation batches."""

    def __init__(self, data: ResidueLabels | SequenceTargets, tokenizer: ProteinTokenizer, max_length: int):
        self.data, self.tokenizer, self.max_length = data, tokenizer, max_length

    def __len__(self) -> int:
        return len(self.data)

    def example(
        self, index: int, streams: Callable[[int], torch.Generator] | None = None
    ) -> dict[str, Tensor]:
        """Protein ``index``: ``(1, L)`` tensors (and ``targets`` ``(1,)`` for regression)."""
        return self.data.batch([index], self.tokenizer, self.max_length)

    def collate(self, examples: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Pad examples into one batch."""
        return pad_batch(examples, self.tokenizer.pad_id)

    def batches(self, batch_size: int, max_batches: int | None = None) -> Iterator[dict[str, Tensor]]:
        """Every protein in order, ``batch_size`` at a time (at most ``max_batches`` batches)."""
        for b, start in enumerate(range(0, len(self), batch_size)):
            if max_batches is not None and b >= max_batches:
                return
            yield self.data.batch(
                range(start, min(start + batch_size, len(self))), self.tokenizer, self.max_length
            )


# Characters a label file may hold when its classes are read from it.
_PRINTABLE = "".join(chr(c) for c in range(33, 127) if chr(c) not in ">;")


def _flip(*parts: str) -> Path:
    return shipped_data("proteins", *parts)


# The FLIP tasks shipped with the package: name → loader of one split.
SHIPPED_TASKS: dict[str, Callable[..., ResidueLabels | SequenceTargets]] = {
    "secondary_structure": lambda split, limit=None: ResidueLabels.load(
        _flip("flip_secondary_structure", "sequences.fasta.gz"),
        _flip("flip_secondary_structure", "sampled_labels.fasta.gz"),
        mask=_flip("flip_secondary_structure", "mask.fasta.gz"),
        classes="HEC",
        split=split,
        limit=limit,
    ),
    "conservation": lambda split, limit=None: ResidueLabels.load(
        _flip("flip_conservation", "sequences.fasta.gz"),
        _flip("flip_conservation", "sampled_labels.fasta.gz"),
        classes="123456789",
        split=split,
        limit=limit,
    ),
    "gb1": lambda split, limit=None: SequenceTargets.load(
        _flip("flip_gb1", "sampled.fasta.gz"), split=split, limit=limit
    ),
}


def load_shipped_task(name: str, split: str, limit: int | None = None) -> ResidueLabels | SequenceTargets:
    """One split of a shipped FLIP task: ``"secondary_structure"`` (Q3), ``"conservation"``
    (9 classes) or ``"gb1"`` (fitness regression)."""
    if name not in SHIPPED_TASKS:
        raise ValueError(f"task must be one of {sorted(SHIPPED_TASKS)}, got {name!r}")
    return SHIPPED_TASKS[name](split, limit)
