"""Downstream task: per-residue 3-state secondary structure (Q3) on the FLIP split.

A linear head on top of a (pre-trained or randomly initialized) Performer encoder predicts
H / E / C for every residue; unresolved residues (mask 0) and special tokens are excluded from
the loss and from Q3, as in NetSurfP-2.0 / ProtTrans. ``finetune`` trains the encoder and the
head together (or the head alone with ``freeze_encoder=True``, a linear probe) and reports Q3
on the test split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from performers.models.performer import PerformerModel
from performers.proteins.data import IGNORE_INDEX, split_of
from performers.proteins.fasta import read_fasta
from performers.proteins.tokenizer import ProteinTokenizer

__all__ = ["LABELS", "SecondaryStructureData", "SecondaryStructureModel", "finetune", "q3_accuracy"]

LABELS = "HEC"
DEFAULT_DIR = Path(__file__).resolve().parents[3] / "data" / "proteins" / "flip_secondary_structure"


@dataclass
class SecondaryStructureData:
    """Sequences, per-residue labels and resolved masks of one split."""

    sequences: list[str]
    labels: list[str]
    resolved: list[str]

    @classmethod
    def load(cls, split: str, directory: str | Path = DEFAULT_DIR, limit: int | None = None):
        directory = Path(directory)
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


class SecondaryStructureModel(nn.Module):
    """A Performer encoder with a linear per-residue head: logits ``(B, L, 3)``."""

    def __init__(self, encoder: PerformerModel) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.d_model, len(LABELS))

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.head(self.encoder(input_ids, attention_mask).last_hidden_state)


def q3_accuracy(logits: Tensor, labels: Tensor) -> tuple[int, int]:
    """``(correct, scored)`` over positions whose label is not -100."""
    keep = labels != IGNORE_INDEX
    return int((logits[keep].argmax(-1) == labels[keep]).sum()), int(keep.sum())


@torch.no_grad()
def evaluate_q3(
    model: SecondaryStructureModel,
    data: SecondaryStructureData,
    tokenizer,
    max_length: int,
    batch_size: int = 16,
) -> float:
    model.eval()
    correct = scored = 0
    for start in range(0, len(data.sequences), batch_size):
        indices = list(range(start, min(start + batch_size, len(data.sequences))))
        ids, attention, labels = data.batch(indices, tokenizer, max_length)
        right, n = q3_accuracy(model(ids, attention), labels)
        correct, scored = correct + right, scored + n
    return correct / scored


def finetune(
    encoder: PerformerModel,
    *,
    steps: int = 200,
    batch_size: int = 16,
    max_length: int = 256,
    learning_rate: float = 1e-3,
    freeze_encoder: bool = False,
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
    log=print,
) -> dict[str, float]:
    """Train a per-residue head (and the encoder unless frozen); returns test Q3 and the loss."""
    tokenizer = ProteinTokenizer()
    train = SecondaryStructureData.load("train", limit=train_limit)
    test = SecondaryStructureData.load("test", limit=test_limit)
    torch.manual_seed(seed)
    model = SecondaryStructureModel(encoder)
    if freeze_encoder:
        encoder.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    loss_value = math.nan
    for step in range(1, steps + 1):
        model.train()
        indices = torch.randint(0, len(train.sequences), (batch_size,), generator=generator).tolist()
        ids, attention, labels = train.batch(indices, tokenizer, max_length)
        loss = nn.functional.cross_entropy(model(ids, attention).flatten(0, 1), labels.flatten())
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()
        if step % 50 == 0 or step == steps:
            log(f"finetune step {step}/{steps} loss {loss_value:.4f}")
    return {"q3": evaluate_q3(model, test, tokenizer, max_length), "final_loss": loss_value}
