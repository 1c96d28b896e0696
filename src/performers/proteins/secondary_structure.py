"""FLIP's per-residue 3-state secondary structure (H / E / C) split: sequences, labels and
resolved masks, as examples and batches for token classification.

Unresolved residues (mask 0) and special tokens get the ignored label, so they count in neither
the loss nor Q3 (as in NetSurfP-2.0 / ProtTrans). The model and the fine-tuning live in
:mod:`performers.experiments.secondary_structure`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from performers.proteins.data import pad_batch, split_of
from performers.proteins.fasta import read_fasta
from performers.proteins.tokenizer import ProteinTokenizer
from performers.utils import IGNORE_INDEX, shipped_data

__all__ = ["LABELS", "SecondaryStructureData", "SecondaryStructureExamples", "default_directory"]

LABELS = "HEC"


def default_directory() -> Path:
    """The FLIP secondary-structure files shipped with the package."""
    return shipped_data("proteins", "flip_secondary_structure")


@dataclass
class SecondaryStructureData:
    """Sequences, per-residue labels and resolved masks of one split."""

    sequences: list[str]
    labels: list[str]
    resolved: list[str]

    @classmethod
    def load(cls, split: str, directory: str | Path | None = None, limit: int | None = None):
        """The records of ``split`` (``"train"``, ``"valid"`` or ``"test"``), the first ``limit``."""
        directory = default_directory() if directory is None else Path(directory)
        sequences = {r.id: r.sequence for r in read_fasta(directory / "sequences.fasta.gz")}
        masks = {r.id: r.sequence for r in read_fasta(directory / "mask.fasta.gz", alphabet="01")}
        chosen = [
            r
            for r in read_fasta(directory / "sampled_labels.fasta.gz", alphabet=LABELS)
            if split_of(r) == split
        ]
        chosen = chosen[:limit]
        for r in chosen:
            if not len(sequences[r.id]) == len(r.sequence) == len(masks[r.id]):
                raise ValueError(
                    f"{directory}: record {r.id!r} has sequence, labels and mask of different lengths"
                )
        return cls(
            [sequences[r.id] for r in chosen], [r.sequence for r in chosen], [masks[r.id] for r in chosen]
        )

    def batch(
        self, indices: list[int], tokenizer: ProteinTokenizer, max_length: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(input_ids, attention_mask, labels)``, each ``(B, L)``; labels -100 where not scored."""
        room = max_length - 2
        ids, attention = tokenizer.batch_encode([self.sequences[i][:room] for i in indices])
        labels = torch.full_like(ids, IGNORE_INDEX)
        for row, i in enumerate(indices):
            pairs = zip(self.labels[i][:room], self.resolved[i][:room], strict=True)
            for position, (label, resolved) in enumerate(pairs):
                if resolved == "1":
                    labels[row, position + 1] = LABELS.index(label)  # +1: after <cls>
        return ids, attention, labels


class SecondaryStructureExamples:
    """Token-classification examples of one split for :class:`performers.training.Trainer`:
    each protein cropped at its start to ``max_length`` tokens (no randomness)."""

    def __init__(self, data: SecondaryStructureData, tokenizer: ProteinTokenizer, max_length: int) -> None:
        self.data, self.tokenizer, self.max_length = data, tokenizer, max_length

    def __len__(self) -> int:
        return len(self.data.sequences)

    def _batch(self, indices: list[int]) -> dict[str, Tensor]:
        ids, attention, labels = self.data.batch(indices, self.tokenizer, self.max_length)
        return {"input_ids": ids, "attention_mask": attention, "labels": labels}

    def example(
        self, index: int, streams: Callable[[int], torch.Generator] | None = None
    ) -> dict[str, Tensor]:
        """Protein ``index``: ``input_ids``, ``attention_mask``, ``labels``, each ``(1, L)``."""
        return self._batch([index])

    def collate(self, examples: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Pad examples into one batch ``(B, max L)``."""
        return pad_batch(examples, self.tokenizer.pad_id)

    def batches(self, batch_size: int) -> Iterator[dict[str, Tensor]]:
        """Every protein in order, ``batch_size`` at a time (for evaluation)."""
        for start in range(0, len(self), batch_size):
            yield self._batch(list(range(start, min(start + batch_size, len(self)))))
