"""Downstream task: per-residue 3-state secondary structure (Q3) on FLIP's split, fine-tuned
with the project's one training loop.

A linear head on top of a (pre-trained or randomly initialized) Performer encoder predicts
H / E / C for every residue; unresolved residues and special tokens carry no label
(:mod:`performers.proteins.secondary_structure`). :func:`finetune` trains the encoder and the
head together (or the head alone with ``freeze_encoder=True``, a linear probe) with
:class:`~performers.training.Trainer` — AdamW, the warm-up/cosine schedule, feature redraws of
the encoder's FAVOR layers, checkpoints with exact resume — and reports Q3 on the test split.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from performers.models import PerformerModel
from performers.proteins import LABELS, ProteinTokenizer, SecondaryStructureData, SecondaryStructureExamples
from performers.training import Trainer, TrainingConfig, evaluate_tokens

__all__ = ["SecondaryStructureModel", "evaluate_q3", "finetune"]


class SecondaryStructureModel(nn.Module):
    """A Performer encoder with a linear per-residue head: logits ``(B, L, 3)``."""

    def __init__(self, encoder: PerformerModel) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.d_model, len(LABELS))

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.head(self.encoder(input_ids, attention_mask).last_hidden_state)


def evaluate_q3(model: nn.Module, examples: SecondaryStructureExamples, batch_size: int = 16) -> float:
    """Q3: the share of scored residues whose state is predicted right."""
    return evaluate_tokens(model, examples.batches(batch_size), causal=False)["accuracy"]


def finetune(
    encoder: PerformerModel,
    training: TrainingConfig,
    *,
    out_dir: str | Path,
    freeze_encoder: bool = False,
    train_limit: int | None = None,
    test_limit: int | None = None,
    resume: bool = False,
    log=print,
) -> dict[str, float]:
    """Train a per-residue head (and the encoder unless frozen) on FLIP's training proteins.

    ``training.task`` is set to ``"tokens"`` (labels at their positions); validation Q3 on FLIP's
    validation proteins every ``training.eval_every`` steps (at most ``eval_batches`` batches),
    checkpoints and metrics under ``out_dir``. The head is initialized after
    ``torch.manual_seed(training.seed)``.

    Returns:
        ``{"q3": test Q3, "valid_q3": last validation Q3, "steps": steps trained}``.
    """
    training = replace(training, task="tokens")
    tokenizer = ProteinTokenizer()
    train = SecondaryStructureExamples(
        SecondaryStructureData.load("train", limit=train_limit), tokenizer, training.max_length
    )
    valid = SecondaryStructureExamples(SecondaryStructureData.load("valid"), tokenizer, training.max_length)
    test = SecondaryStructureExamples(
        SecondaryStructureData.load("test", limit=test_limit), tokenizer, training.max_length
    )
    torch.manual_seed(training.seed)
    model = SecondaryStructureModel(encoder)
    if freeze_encoder:
        encoder.requires_grad_(False)

    def validate(model: nn.Module) -> dict[str, float]:
        batches = (b for i, b in enumerate(valid.batches(training.batch_size)) if i < training.eval_batches)
        return {"q3": evaluate_tokens(model, batches, causal=False)["accuracy"]}

    trainer = Trainer(model, train, training, out_dir, evaluate=validate, log=log)
    last = trainer.fit(resume=resume)
    return {
        "q3": evaluate_q3(model, test, training.batch_size),
        "valid_q3": last.get("q3", float("nan")),
        "steps": trainer.step,
    }
