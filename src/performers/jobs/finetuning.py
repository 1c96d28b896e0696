"""Fine-tuning a protein encoder on labelled data, with the project's one training loop.

Per-residue classification (FLIP secondary structure: Q3; conservation: 9 classes) puts a linear
head on every residue (:class:`TokenClassifier`); sequence-level regression (FLIP GB1 fitness)
puts one on the mean of the residues' hidden states (:class:`SequenceRegressor`). :func:`finetune`
trains the encoder and the head together (or the head alone with ``freeze_encoder=True``, a
linear probe) with :class:`~performers.training.Trainer` — AdamW, the warm-up/cosine schedule,
feature redraws of the encoder's FAVOR layers, validation, checkpoints with exact resume — then
writes the model to ``OUT/final/`` (:mod:`performers.jobs.finetuned`; loaded by
:func:`~performers.jobs.load_protein_model`, run by :func:`~performers.jobs.predict_proteins`),
predicts the test split with it and scores those predictions beside a trivial predictor's
(``OUT/test_predictions.csv``, ``OUT/results.json``): accuracy over scored residues (named
``q3`` for three-state secondary structure) against the training split's majority class, or
Spearman correlation and MSE against the training split's mean. :func:`labelled_splits` reads
the labelled data and :func:`finetuning_encoder` makes the encoder, as ``performers finetune``
chooses them: this package's, or a Hugging Face ESM / ProtBert base model wrapped by
:class:`HuggingFaceEncoder`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from performers.jobs.finetuned import HuggingFaceEncoder, SequenceRegressor, TokenClassifier, save_finetuned
from performers.jobs.hf_protein_lm import protein_lm_from_directory
from performers.jobs.prediction import Predictions, predict_proteins
from performers.jobs.protein_models import load_protein_model, protein_model_source
from performers.jobs.proteins import load_trained
from performers.jobs.results_file import Metric, write_results
from performers.models import PerformerConfig, PerformerModel
from performers.proteins import (
    LabelledExamples,
    ProteinTokenizer,
    ResidueLabels,
    SequenceTargets,
    load_shipped_task,
)
from performers.training import (
    Trainer,
    TrainingConfig,
    evaluate_regression,
    evaluate_tokens,
    resolve_device,
    spearman,
)
from performers.utils import InputError, atomic_directory, write_csv

__all__ = [
    "HuggingFaceEncoder",
    "SequenceRegressor",
    "TokenClassifier",
    "classification_metric_name",
    "evaluate_labelled",
    "finetune",
    "finetuning_encoder",
    "labelled_metrics",
    "labelled_splits",
]

# The three-state secondary structure alphabet (DSSP reduced to helix, strand, coil): its
# per-residue accuracy is what the field calls Q3.
_Q3_CLASSES = frozenset("HEC")


def evaluate_labelled(
    model: nn.Module, examples: LabelledExamples, batch_size: int, max_batches=None
) -> dict:
    """Accuracy over scored residues (``ResidueLabels``) or Spearman and MSE (``SequenceTargets``)."""
    batches = examples.batches(batch_size, max_batches)
    if examples.data.kind == "regression":
        return evaluate_regression(model, batches)
    return evaluate_tokens(model, batches, causal=False)


def classification_metric_name(data: ResidueLabels | SequenceTargets) -> str:
    """``"q3"`` for three-state secondary structure (classes H, E, C: FLIP's shipped task or
    your own DSSP labels), ``"accuracy"`` for other classes; ``"spearman"`` for regression."""
    if data.kind == "regression":
        return "spearman"
    return "q3" if frozenset(data.classes) == _Q3_CLASSES else "accuracy"


def _renamed(metrics: dict[str, float], name: str) -> dict[str, float]:
    """Validation metrics under the names the test metrics have (``valid_q3`` in metrics.jsonl,
    not ``valid_accuracy``): a classifier's perplexity is its mean cross-entropy, ``loss``."""
    if "spearman" in metrics:
        return {"spearman": metrics["spearman"], "mse": metrics["mse"], "proteins": metrics["count"]}
    return {name: metrics["accuracy"], "loss": math.log(metrics["perplexity"]), "residues": metrics["tokens"]}


def labelled_metrics(
    predictions: Predictions, train: ResidueLabels | SequenceTargets, test: ResidueLabels | SequenceTargets
) -> dict[str, Metric]:
    """The test metrics of ``predictions`` (of ``test``'s proteins, in order), each beside what a
    trivial predictor fitted on ``train`` scores on the same residues or proteins.

    Per-residue classes: accuracy over the scored residues that were predicted (named by
    :func:`classification_metric_name`), beside always predicting the training split's most
    frequent scored class (ties: the first in class order). Regression: Spearman correlation
    (no baseline: a constant has no rank correlation) and MSE, beside predicting the training
    split's mean target. A metric over no residue is NaN (written as null).
    """
    if [p.id for p in predictions.proteins] != list(test.ids):
        raise ValueError("predictions must be of the test split's proteins, in its order")
    if test.kind == "regression":
        return _regression_metrics(predictions, train, test)
    counts = Counter(c for labels, scored in zip(train.labels, train.scored, strict=True)
                     for c, s in zip(labels, scored, strict=True) if s == "1")  # fmt: skip
    majority = max(train.classes, key=lambda c: (counts[c], -train.classes.index(c)))
    right = baseline = counted = 0
    for protein, labels, scored in zip(predictions.proteins, test.labels, test.scored, strict=True):
        for predicted, truth, keep in zip(protein.labels or [], labels, scored, strict=False):
            if keep == "1":
                counted += 1
                right += predicted == truth
                baseline += truth == majority
    name = classification_metric_name(test)
    value = right / counted if counted else math.nan
    chance = baseline / counted if counted else math.nan
    return {name: Metric(value, chance, f"majority class {majority!r} of the training split", True, counted)}


def _regression_metrics(
    predictions: Predictions, train: SequenceTargets, test: SequenceTargets
) -> dict[str, Metric]:
    predicted = torch.tensor([p.value for p in predictions.proteins], dtype=torch.float64)
    target = torch.tensor(test.targets, dtype=torch.float64)
    mean = sum(train.targets) / len(train.targets)
    count = len(target)
    rank = spearman(predicted, target) if count > 1 else math.nan
    return {
        "spearman": Metric(rank, None, "none: a constant predictor has no rank correlation", True, count),
        "mse": Metric(
            float((predicted - target).pow(2).mean()),
            float((mean - target).pow(2).mean()),
            f"training-split mean {mean:.4g}",
            False,
            count,
        ),
    }


def _test_rows(predictions: Predictions, test: ResidueLabels | SequenceTargets) -> list[dict[str, Any]]:
    """``predict``'s rows (one per protein) with the truth beside them: ``target`` (regression),
    or ``true_labels`` and ``scored`` (1 = the residue counts) over the predicted residues."""
    rows = predictions.rows("string")
    for row, protein, index in zip(rows, predictions.proteins, range(len(test)), strict=True):
        if test.kind == "regression":
            row["target"] = test.targets[index]
        else:
            row["true_labels"] = test.labels[index][: protein.predicted_length]
            row["scored"] = test.scored[index][: protein.predicted_length]
    return rows


def finetune(
    encoder: PerformerModel | HuggingFaceEncoder,
    training: TrainingConfig,
    *,
    train: ResidueLabels | SequenceTargets,
    valid: ResidueLabels | SequenceTargets,
    test: ResidueLabels | SequenceTargets,
    out_dir: str | Path,
    freeze_encoder: bool = False,
    resume: bool = False,
    device: str | torch.device = "cpu",
    log=print,
    details: dict[str, Any] | None = None,
) -> dict:
    """Train a head (and the encoder unless frozen) on ``train``; evaluate on ``valid`` every
    ``training.eval_every`` steps (at most ``eval_batches`` batches, proteins cropped to
    ``training.max_length`` tokens as in training); then save the model, predict ``test`` and
    score the predictions.

    ``training.task`` is set from the data (``"tokens"`` or ``"regression"``). The head is
    initialized after ``torch.manual_seed(training.seed)`` (on the CPU), then the model moves to
    ``device`` (``"cuda"``, ``"auto"``: :func:`~performers.training.resolve_device`), where it
    trains and is evaluated. ``resume``: continue the newest checkpoint in ``out_dir``.

    ``out_dir`` gets ``checkpoints/`` and ``metrics.jsonl`` (validation as ``valid_q3`` /
    ``valid_accuracy``, ``valid_loss``, ``valid_residues``, or ``valid_spearman``,
    ``valid_mse``, ``valid_proteins``), then, at the end: ``final/`` (the fine-tuned model,
    written atomically: :mod:`performers.jobs.finetuned`), ``test_predictions.csv`` (the test
    proteins, whole as far as the model's positions go, in ``performers predict``'s layout
    plus the truth: :func:`_test_rows`) and ``results.json`` (:func:`labelled_metrics`, each beside
    its baseline; ``details`` are recorded there too).

    Returns:
        ``{"test": {metric: value, ..., "residues" or "proteins": count}, "metrics": the
        :class:`~performers.jobs.results_file.Metric` of each, "valid": the last validation
        metrics, "steps": steps trained, "final": the model's directory, "predictions":
        the test :class:`~performers.jobs.prediction.Predictions`}``.
    """
    kinds = {train.kind, valid.kind, test.kind}
    if len(kinds) != 1:
        raise ValueError(f"train, valid and test must be the same kind of data, got {sorted(kinds)}")
    training = replace(training, task=train.kind)
    tokenizer = ProteinTokenizer()
    examples = {name: LabelledExamples(data, tokenizer, training.max_length) for name, data in
                (("train", train), ("valid", valid), ("test", test))}  # fmt: skip
    torch.manual_seed(training.seed)
    if train.kind == "regression":
        model: TokenClassifier | SequenceRegressor = SequenceRegressor(encoder, tokenizer.special_ids)
    else:
        model = TokenClassifier(encoder, len(train.classes), list(train.classes))
    if freeze_encoder:
        encoder.requires_grad_(False)
    model.to(resolve_device(device))
    name = classification_metric_name(train)

    def validate(model: nn.Module) -> dict[str, float]:
        metrics = evaluate_labelled(model, examples["valid"], training.batch_size, training.eval_batches)
        return _renamed(metrics, name)

    trainer = Trainer(model, examples["train"], training, out_dir, evaluate=validate, log=log)
    last = trainer.fit(resume=resume)
    out = Path(out_dir)
    final = out / "final"
    if trainer.rank == 0:  # one process writes the files (torchrun)
        with atomic_directory(final, replace=True) as tmp:
            save_finetuned(model, tmp, tokenizer=tokenizer, metric=name, max_length=training.max_length,
                           steps=trainer.step)  # fmt: skip
    predictions = predict_proteins(
        model, list(zip(test.ids, test.sequences, strict=True)), tokenizer=tokenizer
    )
    metrics = labelled_metrics(predictions, train, test)
    if trainer.rank == 0:
        write_csv(_test_rows(predictions, test), out / "test_predictions.csv")
        data = {"train": len(train), "valid": len(valid), "test": len(test)}
        write_results(out / "results.json", command="finetune", metrics=metrics, model=str(final),
                      steps=trainer.step, split_sizes=data, **(details or {}))  # fmt: skip
    count = next(iter(metrics.values())).count
    summary: dict[str, Any] = {key: metric.value for key, metric in metrics.items()}
    summary["proteins" if test.kind == "regression" else "residues"] = count
    return {
        "test": summary,
        "metrics": metrics,
        "valid": last,
        "steps": trainer.step,
        "final": final,
        "predictions": predictions,
    }


def labelled_splits(
    *,
    task: str | None = None,
    sequences: str | Path | None = None,
    labels: str | Path | None = None,
    mask: str | Path | None = None,
    targets: str | Path | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> dict[str, LabelledExamples]:
    """``{"train", "valid", "test"}`` of one kind of labelled data: a sequence-level regression
    FASTA (``targets``, ``TARGET=`` and split tags in the headers), your per-residue task
    (``sequences`` and ``labels`` FASTA files, optional ``mask``), or a FLIP task shipped with the
    package (``task``, default ``"secondary_structure"``). ``train_limit``/``test_limit``: the
    first N proteins of those splits.

    Raises:
        ValueError: a malformed or inconsistent file, or an unknown task (naming it).
        OSError: a missing or unreadable file.
    """
    limits = {"train": train_limit, "valid": None, "test": test_limit}
    if targets:
        return {s: SequenceTargets.load(targets, split=s, limit=n) for s, n in limits.items()}
    if sequences or labels:
        return {
            s: ResidueLabels.load(sequences, labels, mask=mask, split=s, limit=n) for s, n in limits.items()
        }
    return {s: load_shipped_task(task or "secondary_structure", s, n) for s, n in limits.items()}


def _source(path: str | Path) -> str | None:
    try:
        return protein_model_source(path)
    except (OSError, ValueError):
        return None  # load_trained names what is wrong with it


def finetuning_encoder(
    pretrained: str | Path | None,
    *,
    random_init: bool = False,
    config: PerformerConfig | None = None,
    seed: int = 0,
) -> tuple[PerformerModel | HuggingFaceEncoder, str]:
    """``(encoder, where it comes from)``: the encoder of the trained model in ``pretrained``;
    with ``random_init``, its architecture randomly initialized after ``torch.manual_seed(seed)``
    (the control run); without ``pretrained``, a new ``PerformerModel(config)`` initialized after
    ``torch.manual_seed(seed)``. A Hugging Face protein model directory (ESM, ProtBert) gives a
    :class:`HuggingFaceEncoder` of its base model; a fine-tuned model's directory, its encoder.

    Raises:
        InputError: a Hugging Face model with ``random_init``, or one whose tokens span several
            residues (ProtGPT2), naming the directory.
    """
    source = _source(pretrained) if pretrained else None
    if source == "finetuned":  # a fine-tuned model's encoder (its head is left behind)
        encoder = load_protein_model(pretrained).model.encoder
        if random_init and isinstance(encoder, PerformerModel):
            torch.manual_seed(seed)
            return PerformerModel(encoder.config), f"random initialization (architecture of {pretrained})"
        if random_init:
            raise InputError(f"{pretrained}: --random-init re-initializes performers encoders only")
        return encoder, f"{pretrained} (the encoder of a fine-tuned model)"
    if source == "huggingface":
        if random_init:
            raise InputError(
                f"{pretrained}: --random-init re-initializes performers models only; for a Hugging "
                "Face backbone, compare with a performers model of similar size"
            )
        lm = protein_lm_from_directory(pretrained)
        return HuggingFaceEncoder.from_protein_lm(
            lm
        ), f"{pretrained} (Hugging Face {lm.protein_model.family})"
    if pretrained and random_init:
        architecture = load_trained(pretrained)[0].config
        torch.manual_seed(seed)
        return PerformerModel(architecture), f"random initialization (architecture of {pretrained})"
    if pretrained:
        model, _ = load_trained(pretrained)
        return (model.model if hasattr(model, "model") else model), str(pretrained)
    if config is None:
        raise TypeError("finetuning_encoder needs a pretrained directory or a config")
    torch.manual_seed(seed)
    return PerformerModel(config), "random initialization"
