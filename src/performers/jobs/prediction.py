"""Predictions of a fine-tuned protein model (``performers predict``): per-residue classes with
their probabilities, or one value per protein.

:func:`predict_proteins` takes a model fine-tuned by :func:`~performers.jobs.finetune` — its
directory (``OUT/final/`` or the run directory ``OUT``), the
:class:`~performers.jobs.protein_models.ProteinModel` :func:`~performers.jobs.load_protein_model`
gives for it, or the :class:`~performers.jobs.finetuned.TokenClassifier` /
:class:`~performers.jobs.finetuned.SequenceRegressor` itself — and proteins, and returns
:class:`Predictions`. Proteins are sorted by length and batched by a budget of padded tokens
(a protein predicted alone gets the same numbers as in a padded batch); each is read whole,
``[<cls>, residues..., <eos>]``, unless ``max_length`` asks for a crop or the model's learned
positions cannot go longer — then its first residues are predicted, the count of cropped
proteins is reported (:attr:`Predictions.cropped`) and each row gives both lengths.

:meth:`Predictions.rows` lays them out as CSV rows (:func:`write_predictions`):

* per-residue classes, ``per_residue="string"`` (default): one row per protein — ``id``,
  ``length`` (residues), ``predicted_length`` (residues predicted), ``labels`` (the predicted
  class of each residue, e.g. ``"CCHHHHEE"``; separated by spaces when a class name is longer
  than one character) and ``confidence`` (the mean over residues of the top probability);
* per-residue classes, ``per_residue="rows"``: one row per residue — ``id``, ``position``
  (1-based), ``residue``, ``label`` and ``p_<class>`` for each class (they sum to 1);
* regression: ``id``, ``length``, ``predicted_length``, ``prediction``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from performers.jobs.cropping import crop_to_rule, model_residue_limit
from performers.jobs.embedding import (
    DEFAULT_MAX_TOKENS,
    SPECIAL_TOKENS_PER_PROTEIN,
    ProteinRecords,
    protein_pairs,
    token_batches,
)
from performers.jobs.finetuned import HuggingFaceEncoder, SequenceRegressor, TokenClassifier
from performers.jobs.hf_protein_lm import _residue_limit as hf_residue_limit
from performers.jobs.protein_models import FINETUNED_KINDS, ProteinModel, load_protein_model
from performers.proteins import ProteinTokenizer
from performers.training import evaluation_mode, model_device
from performers.utils import InputError, write_csv

__all__ = [
    "PER_RESIDUE_FORMATS",
    "NotAFinetunedModelError",
    "Predictions",
    "ProteinPrediction",
    "predict_proteins",
    "write_predictions",
]

PER_RESIDUE_FORMATS = ("string", "rows")


class NotAFinetunedModelError(InputError):
    """A model given to :func:`predict_proteins` that has no classification or regression head
    (a language model, an encoder); the message names it and what it is."""


@dataclass(frozen=True)
class ProteinPrediction:
    """One protein's prediction.

    Attributes:
        id: its id.
        sequence: its residues (all of them, also when only the first were predicted).
        predicted_length: how many of its first residues were predicted.
        labels: per-residue models: the predicted class of each predicted residue; else None.
        probabilities: per-residue models: ``(predicted_length, classes)`` float32, each row
            sums to 1; else None.
        value: regression models: the predicted value; else None.
    """

    id: str
    sequence: str
    predicted_length: int
    labels: list[str] | None = None
    probabilities: Tensor | None = None
    value: float | None = None

    @property
    def length(self) -> int:
        """Residues of the protein."""
        return len(self.sequence)

    @property
    def confidence(self) -> float | None:
        """Mean over the predicted residues of the top class probability (None: regression)."""
        if self.probabilities is None:
            return None
        return float(self.probabilities.max(dim=-1).values.mean())


@dataclass(frozen=True)
class Predictions:
    """What :func:`predict_proteins` returns: ``task`` (``"tokens"`` or ``"regression"``),
    ``classes`` (the class names in order; None for regression), one
    :class:`ProteinPrediction` per protein in input order, and ``cropped`` (how many proteins
    were predicted on their first ``keep`` residues only)."""

    task: str
    classes: list[str] | None
    proteins: list[ProteinPrediction]
    cropped: int = 0
    keep: int | None = None

    def __len__(self) -> int:
        return len(self.proteins)

    def rows(self, per_residue: str = "string") -> list[dict[str, Any]]:
        """CSV rows (module docstring); ``per_residue`` (``"string"`` or ``"rows"``) is read
        for per-residue models only."""
        if per_residue not in PER_RESIDUE_FORMATS:
            raise ValueError(f"per_residue must be one of {PER_RESIDUE_FORMATS}, got {per_residue!r}")
        if self.task == "regression":
            return [
                {
                    "id": p.id,
                    "length": p.length,
                    "predicted_length": p.predicted_length,
                    "prediction": p.value,
                }
                for p in self.proteins
            ]
        if per_residue == "string":
            joiner = "" if all(len(c) == 1 for c in self.classes or []) else " "
            return [
                {
                    "id": p.id,
                    "length": p.length,
                    "predicted_length": p.predicted_length,
                    "labels": joiner.join(p.labels or []),
                    "confidence": p.confidence,
                }
                for p in self.proteins
            ]
        rows = []
        for p in self.proteins:
            probabilities = p.probabilities.tolist()
            for position, (residue, label, row) in enumerate(
                zip(p.sequence, p.labels or [], probabilities, strict=False), start=1
            ):
                out = {"id": p.id, "position": position, "residue": residue, "label": label}
                out.update({f"p_{name}": value for name, value in zip(self.classes or [], row, strict=True)})
                rows.append(out)
        return rows


def _finetuned_module(model: Any) -> tuple[TokenClassifier | SequenceRegressor, ProteinTokenizer | None]:
    """``(module, its tokenizer when known)`` of what :func:`predict_proteins` was given."""
    if isinstance(model, (str, Path)):
        model = load_protein_model(model)
    if isinstance(model, ProteinModel):
        if model.kind not in FINETUNED_KINDS:
            raise NotAFinetunedModelError(
                f"{model.path}: a {model.kind.replace('_', ' ')} ({type(model.model).__name__}), not a "
                "fine-tuned model; predict needs a classifier or regressor of performers finetune "
                "(its run directory or final/)"
            )
        return model.model, model.tokenizer
    if isinstance(model, (TokenClassifier, SequenceRegressor)):
        return model, None
    raise TypeError(
        "model must be a fine-tuned model directory, its ProteinModel, or a TokenClassifier / "
        f"SequenceRegressor, got {type(model).__name__}"
    )


def _residue_limit(module: TokenClassifier | SequenceRegressor) -> int | None:
    """Most residues the encoder's positions allow (None: no limit, rotary positions)."""
    encoder = module.encoder
    if isinstance(encoder, HuggingFaceEncoder):
        backbone_config = encoder.backbone.config
        return hf_residue_limit(backbone_config, str(getattr(backbone_config, "model_type", "")))
    return model_residue_limit(encoder)


def predict_proteins(
    model: str | Path | ProteinModel | TokenClassifier | SequenceRegressor,
    records: ProteinRecords,
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    max_length: int | None = None,
    device: torch.device | str | None = None,
    tokenizer: ProteinTokenizer | None = None,
) -> Predictions:
    """Run a fine-tuned model on proteins (module docstring).

    Args:
        model: a fine-tuned model's directory (``performers finetune``'s run directory or its
            ``final/``), its :class:`~performers.jobs.protein_models.ProteinModel`, or the
            :class:`~performers.jobs.finetuned.TokenClassifier` /
            :class:`~performers.jobs.finetuned.SequenceRegressor` itself.
        records: :class:`~performers.proteins.FastaRecord` or ``(id, sequence)`` pairs.
        max_tokens: padded tokens per forward pass (a longer protein runs alone).
        max_length: crop each protein to this many tokens, ``<cls>`` and ``<eos>`` included
            (its first ``max_length - 2`` residues are predicted); default: whole proteins, as
            far as the model's positions go.
        device: where the model runs (default: where it is; a directory loads on the CPU).
        tokenizer: the ids the model reads (default: the loaded model's, else a
            :class:`~performers.proteins.ProteinTokenizer`).

    Returns:
        :class:`Predictions`, proteins in input order.

    Raises:
        NotAFinetunedModelError: a model directory without a classification or regression head.
        NotAProteinModelError, FileNotFoundError: a directory that is no protein model.
        ValueError: an id that appears twice, an empty protein, ``max_length`` below 3 or beyond
            the learned positions (the cropping rule),
            ``max_tokens`` below 1.
    """
    module, saved_tokenizer = _finetuned_module(model)
    tokenizer = tokenizer or saved_tokenizer or ProteinTokenizer()
    if device is not None:
        module.to(device)
    pairs = protein_pairs(records)
    # The one cropping rule of every command (performers.jobs.cropping).
    kept_pairs, crop = crop_to_rule(pairs, _residue_limit(module), max_length=max_length)
    kept = [sequence for _, sequence in kept_pairs]
    cropped = len(crop.cropped)
    lengths = [len(sequence) + SPECIAL_TOKENS_PER_PROTEIN for sequence in kept]
    results: list[ProteinPrediction | None] = [None] * len(pairs)
    regression = isinstance(module, SequenceRegressor)
    classes = None if regression else list(module.classes)
    where = model_device(module)
    with evaluation_mode(module), torch.no_grad():
        for batch in token_batches(lengths, max_tokens):
            ids, mask = tokenizer.batch_encode([kept[i] for i in batch])
            out = module(ids.to(where), mask.to(where)).float().cpu()
            for row, index in enumerate(batch):
                name, sequence = pairs[index]
                n = len(kept[index])
                if regression:
                    results[index] = ProteinPrediction(name, sequence, n, value=float(out[row]))
                    continue
                probabilities = torch.softmax(out[row, 1 : n + 1], dim=-1)  # after <cls>
                labels = [classes[k] for k in probabilities.argmax(-1).tolist()]
                results[index] = ProteinPrediction(name, sequence, n, labels, probabilities)
    task = "regression" if regression else "tokens"
    return Predictions(task, classes, list(results), cropped, crop.limit if cropped else None)


def write_predictions(predictions: Predictions, path: str | Path, *, per_residue: str = "string") -> Path:
    """Write :meth:`Predictions.rows` as CSV, atomically; returns the path.

    Raises:
        ValueError: no prediction, or an unknown ``per_residue`` layout.
    """
    return write_csv(predictions.rows(per_residue), path)
