"""Evaluating protein language models: accuracy and perplexity over fixed batches (aggregate and
per protein), their unigram baselines, and reading the splits of a corpus — a tagged FASTA or a
prepared dataset.

:func:`evaluate_proteins` is what ``performers evaluate`` runs: proteins are cropped only by the
one rule of :mod:`performers.jobs.cropping` (asked for, or the model's learned positions; a
rotary model reads every protein whole), each protein's masks are its own
(:func:`performers.proteins.data.item_generator`), a batch's proteins run packed end to end
with this package's models (:mod:`performers.jobs.packing`; the same batches and masks as
padded, so the same numbers), and a protein with nothing to score is
skipped and listed (never a row of NaN). :func:`unigram_metrics` puts the unigram baseline of
a training split beside each number (``results.json``, :mod:`performers.jobs.results_file`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from performers.jobs.cropping import (
    SPECIAL_TOKENS,
    CropReport,
    ReportedRows,
    crop_plan,
    model_residue_limit,
)
from performers.jobs.packing import pack_rows, resolve_pack, unpack_rows
from performers.jobs.results_file import Metric, read_results
from performers.models import PerformerForCausalLM
from performers.proteins import (
    ProteinTokenizer,
    UnigramBaseline,
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
    "ProteinEvaluation",
    "corpus_split",
    "corpus_splits",
    "evaluate_model",
    "evaluate_per_sequence",
    "evaluate_proteins",
    "evaluation_proteins",
    "protein_evaluator",
    "protein_ids",
    "protein_lengths",
    "residues_as_scored",
    "training_unigram",
    "unigram_metrics",
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
    pack: bool | None = None,
) -> dict[str, float]:
    """Accuracy and perplexity over masked positions (``task="mlm"``) or all next tokens
    (``"clm"``) of ``sequences``, on the fixed batches of
    :func:`performers.proteins.evaluation_batches` (two evaluations of a model agree): the
    trainer's validation and test metric, on proteins cropped to the run's ``max_length``
    window. :func:`evaluate_proteins` is the command's evaluation (whole proteins under the
    cropping rule, per protein, with what was cropped or skipped).
    ``device``: move ``model`` there first (in place); None: where it is (the batches follow).
    ``pack``: as :func:`evaluate_proteins` — each batch's proteins run end to end in one row
    (the same batches and masks, the same numbers up to float rounding); None packs this
    package's models. Concatenated windows (``concatenate``) have no padding and run as they are.

    Raises:
        PackingError: ``pack=True`` for a model that does not take packed input."""
    if device is not None:
        model.to(device)
    if resolve_pack(pack, model) and not concatenate:
        model = _PackedBatches(model)
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


@dataclass
class ProteinEvaluation:
    """What :func:`evaluate_proteins` (or
    :func:`~performers.jobs.hf_protein_lm.evaluate_protein_lm`) measured.

    Attributes:
        summary: ``accuracy``, ``perplexity`` (``exp`` of the mean NLL), ``loss`` (mean NLL),
            ``tokens`` (positions scored) and ``proteins`` (proteins scored).
        rows: one per scored protein: ``id``, ``length`` (its residues), ``scored_length``
            (residues read, after any crop), ``tokens``, ``loss``, ``perplexity``, ``accuracy``.
        crop: which proteins were cropped, and which skipped with nothing to score.
        residues: the residues each scored protein was read with (cropped), in row order — the
            data a baseline is computed on (:func:`unigram_metrics`).

    ``summary, rows = evaluation`` unpacks as the earlier ``(summary, rows)`` pair did.
    """

    summary: dict[str, float]
    rows: list[dict]
    crop: CropReport
    residues: list[str] = field(default_factory=list, repr=False)

    def __iter__(self):
        return iter((self.summary, self.rows))


def protein_lengths(sequences) -> list[int]:
    """Residues of each protein: residue strings or a prepared split (``<cls>``, ``<eos>`` off)."""
    if hasattr(sequences, "tokens") and hasattr(sequences, "length"):
        return [sequences.length(i) - SPECIAL_TOKENS for i in range(len(sequences))]
    return [len(sequence) for sequence in sequences]


def residues_as_scored(sequences, indices: Sequence[int], keep: Sequence[int], tokenizer: ProteinTokenizer):
    """Residue strings of proteins ``indices`` of ``sequences`` (strings or a prepared split),
    each cut to its first ``keep[i]`` residues: what the model read of them."""
    if not (hasattr(sequences, "tokens") and hasattr(sequences, "length")):
        return [sequences[i][:k] for i, k in zip(indices, keep, strict=True)]
    letters = tokenizer.tokens
    return [
        "".join(letters[t] for t in sequences.tokens(i)[1 : 1 + k])
        for i, k in zip(indices, keep, strict=True)
    ]


def _summary(tokens: int, nll: float, correct: int, proteins: int) -> dict[str, float]:
    loss = nll / tokens
    return {
        "accuracy": correct / tokens,
        "perplexity": math.exp(loss),
        "loss": loss,
        "tokens": tokens,
        "proteins": proteins,
    }


def evaluate_proteins(
    model: torch.nn.Module,
    tokenizer: ProteinTokenizer,
    sequences,
    ids: Sequence[str] | None = None,
    *,
    task: str | None = None,
    max_length: int | None = None,
    batch_size: int = 16,
    mask_prob: float = 0.15,
    seed: int = 0,
    device: str | torch.device | None = None,
    pack: bool | None = None,
) -> ProteinEvaluation:
    """Accuracy and perplexity of this package's language model on proteins, in aggregate and
    per protein (``performers evaluate``): over masked positions (``task="mlm"``; each residue
    masked with probability ``mask_prob``, BERT's 80/10/10, the masks of a protein drawn from
    ``seed`` and its own residues) or every next token, ``<eos>`` included (``"clm"``).

    Args:
        sequences: residue strings or a prepared split; ``ids``: their ids, in order
            (default ``"0"``, ``"1"``, ...).
        task: default from the model (:class:`PerformerForCausalLM`: ``"clm"``, else ``"mlm"``).
        max_length: crop to this many tokens (``<cls>``, ``<eos>`` included); default: whole
            proteins, cropped only at the model's learned positions (:mod:`performers.jobs.cropping`).
        device: move ``model`` there first (in place); None: where it is (the batches follow).
        pack: run each batch packed — its proteins end to end in one row, no padding computed
            (:mod:`performers.jobs.packing`): the same proteins per batch and the same masks,
            so the same numbers up to float rounding. None: pack when the model takes packed
            input (this package's models); False: the padded batches.

    Returns:
        A :class:`ProteinEvaluation`; proteins with no scored position (a short protein none of
        whose residues was drawn for masking) have no row and are listed in ``crop.skipped``.

    Raises:
        ValueError: no protein, a bad or too large ``max_length``, or no position scored at all.
        PackingError: ``pack=True`` for a model that does not take packed input.
    """
    pack = resolve_pack(pack, model)
    if device is not None:
        model.to(device)
    if task is None:
        task = "clm" if isinstance(model, PerformerForCausalLM) else "mlm"
    if len(sequences) == 0:
        raise ValueError("no proteins to evaluate (an empty split?)")
    lengths = protein_lengths(sequences)
    names = [str(i) for i in range(len(lengths))] if ids is None else list(ids)
    if len(names) != len(lengths):
        raise ValueError(f"ids has {len(names)} entries for {len(lengths)} proteins")
    crop = crop_plan(names, lengths, model_residue_limit(model), max_length=max_length)
    # No protein is cut below crop.limit: the window is the longest protein as read.
    window = max(crop.scored_length(max(lengths)) + SPECIAL_TOKENS, 3)
    batches = evaluation_batches(
        sequences,
        tokenizer,
        task=task,
        max_length=window,
        batch_size=batch_size,
        mask_prob=mask_prob,
        seed=seed,
    )
    rows: list[dict] = []
    scored: list[int] = []
    skipped: list[str] = []
    totals = [0, 0.0, 0]  # tokens, summed NLL, correct
    index = 0
    with evaluation_mode(model):
        for batch in model_batches(model, batches):
            logits = _batch_logits(model, batch, pack)
            # One copy per batch to the CPU, not one wait per row.
            metrics = row_token_metrics(logits, batch["labels"], causal=task == "clm")
            correct, counted, nll = (t.cpu() for t in metrics)
            for row in range(len(counted)):
                n, name = int(counted[row]), names[index]
                if n == 0:  # nothing masked: no row of NaN, the protein is listed instead
                    skipped.append(name)
                else:
                    loss = float(nll[row]) / n
                    rows.append(
                        {
                            "id": name,
                            "length": lengths[index],
                            "scored_length": crop.scored_length(lengths[index]),
                            "tokens": n,
                            "loss": loss,
                            "perplexity": math.exp(loss),
                            "accuracy": int(correct[row]) / n,
                        }
                    )
                    scored.append(index)
                    totals[0] += n
                    totals[1] += float(nll[row])
                    totals[2] += int(correct[row])
                index += 1
    if skipped:
        crop = crop.skipping(skipped, f"no residue drawn for masking, each with probability {mask_prob}")
    if not rows:
        raise ValueError(f"no position to score in {len(lengths)} proteins (every one was skipped)")
    keep = [row["scored_length"] for row in rows]
    return ProteinEvaluation(
        _summary(totals[0], totals[1], totals[2], len(rows)),
        rows,
        crop,
        residues_as_scored(sequences, scored, keep, tokenizer),
    )


class _PackedBatches(torch.nn.Module):
    """``model`` called as a padded batch's model (``(input_ids, attention_mask)`` → logits
    ``(B, L, V)``) that runs the batch's proteins packed (:func:`_batch_logits`)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return _batch_logits(self.model, {"input_ids": input_ids, "attention_mask": attention_mask}, True)


def _batch_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor], pack: bool) -> torch.Tensor:
    """``(B, L, V)`` logits of a padded evaluation batch: from the padded batch, or from its
    proteins packed end to end in one row (``pack``) and put back in the padded layout, where
    the metrics read them (zeros at the padding, which has no label)."""
    if not pack:
        return logits_of(model(batch["input_ids"], batch["attention_mask"]))
    ids, cu_seqlens = pack_rows(batch["input_ids"], batch["attention_mask"])
    return unpack_rows(logits_of(model(ids, cu_seqlens=cu_seqlens)), batch["attention_mask"])


def evaluate_per_sequence(
    model: torch.nn.Module,
    tokenizer: ProteinTokenizer,
    sequences,
    ids: list[str],
    *,
    task: str,
    max_length: int | None = None,
    batch_size: int = 16,
    mask_prob: float = 0.15,
    seed: int = 0,
    device: str | torch.device | None = None,
    pack: bool | None = None,
) -> list[dict]:
    """The rows of :func:`evaluate_proteins` — one per scored protein: ``id``, ``length`` (its
    residues), ``scored_length`` (after any crop), ``tokens`` (positions scored), ``loss``
    (mean NLL), ``perplexity``, ``accuracy``; the list's ``.crop`` names the cropped proteins and
    those skipped with nothing to score (none gets a row of NaN).

    ``sequences``: residue strings or a prepared split; ``ids``: their FASTA ids, in order;
    ``device``: as :func:`evaluate_model`; ``pack``: as :func:`evaluate_proteins`.
    """
    evaluation = evaluate_proteins(
        model,
        tokenizer,
        sequences,
        ids,
        task=task,
        max_length=max_length,
        batch_size=batch_size,
        mask_prob=mask_prob,
        seed=seed,
        device=device,
        pack=pack,
    )
    rows = ReportedRows(evaluation.rows)
    rows.crop = evaluation.crop
    return rows


def unigram_metrics(evaluation: ProteinEvaluation, baseline: UnigramBaseline, name: str) -> dict[str, Metric]:
    """``accuracy`` and ``perplexity`` of ``evaluation`` beside those of ``baseline`` (the
    unigram of a training split, :class:`~performers.proteins.UnigramBaseline`) on the residues
    the model read (cropped; skipped proteins left out). ``name`` says where the unigram comes
    from. The unigram predicts residues only: for a causal model, whose next tokens include each
    protein's ``<eos>``, it is computed over the residues."""
    base = baseline.evaluate(evaluation.residues)
    count = int(evaluation.summary["tokens"])
    return {
        "accuracy": Metric(evaluation.summary["accuracy"], base["accuracy"], name, True, count),
        "perplexity": Metric(evaluation.summary["perplexity"], base["perplexity"], name, False, count),
    }


@functools.lru_cache(maxsize=2)
def _corpus_unigram(corpus: str | None) -> UnigramBaseline:
    return UnigramBaseline(corpus_split(corpus, "train"), ProteinTokenizer())


def training_unigram(model: str | Path, data: str | Path | None = None) -> tuple[UnigramBaseline, str]:
    """``(unigram, name)``: the residue frequencies a model's numbers are compared with — its own
    training split's, when ``performers train`` wrote them (``results.json`` of the run
    directory ``model`` or the one above its ``final/``); else the train split of ``data`` (a
    prepared dataset) or of the shipped corpus (``data`` None or a FASTA file), named as such."""
    path = Path(model)
    for candidate in (path / "results.json", path.parent / "results.json" if path.name == "final" else None):
        if candidate is not None and candidate.is_file():
            results = read_results(candidate)
            if results.get("command") == "train" and "unigram" in results:
                unigram = UnigramBaseline.from_dict(results["unigram"], ProteinTokenizer())
                return unigram, "unigram (the model's training split)"
    if data is not None and is_prepared(data) and "train" in read_manifest(data)["splits"]:
        return _corpus_unigram(str(data)), f"unigram ({data} train split)"
    name = "unigram (shipped corpus train split)"
    if data is not None:  # a FASTA: whatever the model was trained on is not recorded
        name = "unigram (shipped corpus train split; the model's training data is not recorded)"
    return _corpus_unigram(None), name


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
