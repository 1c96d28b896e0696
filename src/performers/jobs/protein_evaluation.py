"""Evaluating protein language models: accuracy and perplexity over fixed batches (aggregate and
per protein), and reading the splits of a corpus — a tagged FASTA or a prepared dataset."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from performers.proteins import (
    ProteinTokenizer,
    default_corpus,
    evaluation_batches,
    first_records,
    read_fasta,
    read_split,
)
from performers.proteins.data import split_of
from performers.proteins.prepared_dataset import PreparedDataset, is_prepared, read_manifest
from performers.training import TrainingConfig, evaluate_tokens, evaluation_mode, logits_of
from performers.training.evaluation import model_batches, row_token_metrics
from performers.utils import InputError

__all__ = [
    "corpus_split",
    "corpus_splits",
    "evaluate_model",
    "evaluate_per_sequence",
    "evaluation_proteins",
    "protein_evaluator",
    "protein_ids",
]


def corpus_split(corpus: str | Path | None, split: str, limit: int | None = None):
    """The first ``limit`` records of one split of a corpus: a tagged FASTA (default: the shipped
    corpus, parsed into memory) or a prepared dataset directory (memory-mapped, any size; see
    :func:`performers.proteins.prepared.prepare`). A split the prepared dataset lacks is empty."""
    if corpus is not None and is_prepared(corpus):
        if split not in read_manifest(corpus)["splits"]:
            return []
        return first_records(PreparedDataset(corpus, split), limit)
    return read_split(default_corpus() if corpus is None else corpus, split)[:limit]


def evaluation_proteins(data: str | Path | None, split: str = "test", limit: int | None = None):
    """``(proteins, description)`` of what ``performers evaluate`` scores: the first ``limit``
    proteins of ``split`` of the shipped corpus (``data`` None) or of a prepared dataset
    directory, or of every record of a FASTA file ``data`` (any split).

    Raises:
        InputError: ``data`` is neither a FASTA file nor a prepared dataset directory.
        FastaError: a malformed FASTA file (naming the file and line).
    """
    if data is None or is_prepared(data):
        return corpus_split(data, split, limit), f"{data or 'shipped corpus'} {split}"
    path = Path(data)
    if not path.is_file():
        raise InputError(f"{path}: not a FASTA file or a prepared dataset directory")
    return [r.sequence for r in read_fasta(path)][:limit], str(path)


def protein_ids(data: str | Path | None, split: str, count: int) -> list[str]:
    """The ids of the first ``count`` proteins of :func:`evaluation_proteins` (the FASTA ids; a
    prepared dataset's record ids)."""
    if data is not None and is_prepared(data):
        proteins = corpus_split(data, split, count)
        if hasattr(proteins, "record_id"):
            return [proteins.record_id(i) for i in range(len(proteins))]
        return []
    if data is None:  # the shipped corpus: its records of the split, in order
        return [r.id for r in read_fasta(default_corpus()) if split_of(r) == split][:count]
    return [r.id for r in read_fasta(data)][:count]


def corpus_splits(
    corpus: str | Path | None, training: TrainingConfig, train_limit: int | None, test_limit: int | None
) -> tuple:
    """``(train, valid, test)`` of a corpus (see :func:`corpus_split`); the validation split is cut
    to what ``training.eval_batches`` batches use (at least 64 records)."""
    train = corpus_split(corpus, "train", train_limit)
    valid = corpus_split(corpus, "valid", max(64, training.batch_size * training.eval_batches))
    return train, valid, corpus_split(corpus, "test", test_limit)


def evaluate_model(
    model: torch.nn.Module,
    tokenizer: ProteinTokenizer,
    sequences: list[str],
    *,
    task: str,
    max_length: int,
    batch_size: int = 16,
    mask_prob: float = 0.15,
    seed: int = 0,
    max_batches: int | None = None,
    concatenate: bool = False,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Accuracy and perplexity over masked positions (``task="mlm"``) or all next tokens
    (``"clm"``) of ``sequences``, on the fixed batches of
    :func:`performers.proteins.evaluation_batches` (two evaluations of a model agree).
    ``device``: move ``model`` there first (in place); None: where it is (the batches follow)."""
    if device is not None:
        model.to(device)
    batches = evaluation_batches(
        sequences,
        tokenizer,
        task=task,
        max_length=max_length,
        batch_size=batch_size,
        mask_prob=mask_prob,
        seed=seed,
        max_batches=max_batches,
        concatenate=concatenate,
    )
    return evaluate_tokens(model, batches, causal=task == "clm")


def evaluate_per_sequence(
    model: torch.nn.Module,
    tokenizer: ProteinTokenizer,
    sequences,
    ids: list[str],
    *,
    task: str,
    max_length: int,
    batch_size: int = 16,
    mask_prob: float = 0.15,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> list[dict]:
    """One row per protein — ``id``, ``length`` (residues), ``tokens`` (positions scored),
    ``loss`` (mean NLL), ``perplexity``, ``accuracy`` — on the same fixed batches as
    :func:`evaluate_model` (proteins cropped at their start to ``max_length`` tokens; for MLM
    the same seeded masks). A protein with no scored position (MLM: none masked) gets NaN.

    ``sequences``: residue strings or a prepared split; ``ids``: their FASTA ids, in order;
    ``device``: as :func:`evaluate_model`.
    """
    if device is not None:
        model.to(device)
    batches = evaluation_batches(
        sequences,
        tokenizer,
        task=task,
        max_length=max_length,
        batch_size=batch_size,
        mask_prob=mask_prob,
        seed=seed,
    )
    rows: list[dict] = []
    with evaluation_mode(model):
        for batch in model_batches(model, batches):
            logits = logits_of(model(batch["input_ids"], batch["attention_mask"]))
            # One copy per batch to the CPU, not one wait per row.
            metrics = row_token_metrics(logits, batch["labels"], causal=task == "clm")
            correct, counted, nll = (t.cpu() for t in metrics)
            residues = (batch["attention_mask"].sum(-1) - 2).cpu()
            for row in range(len(counted)):
                n = int(counted[row])
                loss = float(nll[row]) / n if n else math.nan
                rows.append(
                    {
                        "id": ids[len(rows)],
                        "length": int(residues[row]),
                        "tokens": n,
                        "loss": loss,
                        "perplexity": math.exp(loss) if n else math.nan,
                        "accuracy": int(correct[row]) / n if n else math.nan,
                    }
                )
    return rows


def protein_evaluator(
    tokenizer: ProteinTokenizer,
    sequences: list[str],
    training: TrainingConfig,
    max_batches: int | None = None,
):
    """``evaluate(model)``: :func:`evaluate_model` on ``sequences`` (at most ``max_batches``
    batches) with a run's task, lengths, batch size and seed."""

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        return evaluate_model(
            model,
            tokenizer,
            sequences,
            task=training.task,
            max_length=training.max_length,
            batch_size=training.batch_size,
            mask_prob=training.mask_prob,
            seed=training.seed,
            max_batches=max_batches,
            concatenate=training.concatenate,
        )

    return evaluate
