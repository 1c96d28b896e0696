"""The ``performers distill`` job: a Hugging Face model directory distilled into its FAVOR+
version and saved (:func:`distill_model`), on the user's texts, the user's proteins (a FASTA
file, for a protein model such as ESM or ProtBert) or the shipped STS-B training sentences. The
loop is :func:`performers.integrations.distill.distill` (the ``[hf]`` extra)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from performers.integrations.distill import (
    DistillConfig,
    ProteinBatches,
    TextBatches,
    distill,
    distill_data_identity,
    make_student,
    read_texts,
    with_lm_labels,
)
from performers.integrations.transformers import load_hf_model
from performers.layers import FavorConfig
from performers.proteins import FastaRecord, read_fasta
from performers.text import load_stsb
from performers.training import owned
from performers.utils import InputError

__all__ = ["DistillationError", "distill_model", "read_proteins"]


class DistillationError(InputError):
    """A teacher that cannot be distilled: already a FAVOR+ model, or saved without a tokenizer."""


def read_proteins(fasta: str | os.PathLike | Iterable[FastaRecord | str]) -> list[str]:
    """The residue strings of ``fasta``: a FASTA file (plain or gzip, read by
    :func:`~performers.proteins.read_fasta`: upper-cased, rare residues kept) or records /
    residue strings already in memory (a string is upper-cased, nothing else checked).

    Raises:
        FastaError: a malformed FASTA file (file, line and column named).
        InputError: no proteins.
    """
    if isinstance(fasta, (str, os.PathLike)):
        name, sequences = str(fasta), [record.sequence for record in read_fasta(fasta)]
    else:
        name = "fasta"
        sequences = [item.sequence if isinstance(item, FastaRecord) else str(item).upper() for item in fasta]
    if not sequences:
        raise InputError(f"{name}: no proteins")
    if "" in sequences:
        raise InputError(f"{name}: protein {sequences.index('')} has no residues")
    return sequences


def distill_model(
    model: str | os.PathLike,
    config: DistillConfig,
    favor: FavorConfig,
    *,
    out_dir: str | os.PathLike,
    texts: str | os.PathLike | None = None,
    fasta: str | os.PathLike | Iterable[FastaRecord | str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device | None = None,
) -> tuple[dict[str, Any], Path]:
    """Distil the softmax model saved in ``model`` into its FAVOR+ version (``favor``) and save
    the student and the tokenizer in ``out_dir/final``; returns ``(distill's result, final)``.

    ``texts``: one text per line (.txt or .txt.gz); ``fasta``: proteins instead, a FASTA file
    (plain or gzip) or its records or residue strings (:func:`read_proteins`), tokenized by the
    teacher's own tokenizer and cropped to random windows of ``config.max_length`` tokens
    (:class:`~performers.integrations.distill.ProteinBatches`); neither: the STS-B training
    sentences (sorted, unique). ``config.data_identity`` is set here
    (:func:`~performers.integrations.distill.distill_data_identity`: the teacher's weights and
    the texts or the protein sequences), so a resume on other data is refused. A causal LM
    (GPT-2, Llama) with a ``task_weight`` also learns the next token; a masked LM (ESM, ProtBert)
    learns the teacher's hidden states and output distributions at every position, without
    masking. ``out_dir`` is owned until the student is saved. ``device``: where teacher and
    student run (None: the CPU, where the teacher is loaded).

    Raises:
        FileNotFoundError: ``model`` has no ``config.json``; ``texts`` or ``fasta`` is missing.
        FastaError: ``fasta`` is malformed.
        InputError: both ``texts`` and ``fasta``; no proteins; a tokenizer that does not read
            proteins one token per residue.
        DistillationError: ``model`` is a FAVOR+ model already, or has no tokenizer.
        ResumeMismatchError, RunDirectoryError, CheckpointError: refusals of the run directory.
    """
    if texts is not None and fasta is not None:
        raise InputError("give texts or fasta (proteins), not both")
    teacher, tokenizer = load_hf_model(model)
    if device is not None:
        teacher.to(device)  # the student, its copy, follows
    lines = read_texts(texts) if texts else None
    proteins = read_proteins(fasta) if fasta is not None else None
    if getattr(teacher.config, "favor_config", None) is not None:
        raise DistillationError(f"{model}: already a FAVOR+ model; distil from the original softmax model")
    if tokenizer is None:
        raise DistillationError(f"{model}: no tokenizer saved with the model")
    if lines is None and proteins is None:
        first, second, _ = load_stsb("train")
        lines = sorted(set(first + second))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if proteins is None:
        identity = distill_data_identity(model, lines)
        batches = TextBatches(lines, tokenizer, config.batch_size, config.max_length, seed=config.seed)
    else:
        identity = distill_data_identity(model, proteins=proteins)
        batches = ProteinBatches(proteins, tokenizer, config.batch_size, config.max_length, seed=config.seed)
    config = replace(config, data_identity=identity)
    student = make_student(teacher, favor)
    causal_lm = student.config.model_type in ("gpt2", "llama") and hasattr(student, "lm_head")
    if causal_lm and config.task_weight:
        batches = with_lm_labels(batches)
    final = Path(out_dir) / "final"
    with owned(out_dir):  # owned until the student is saved
        result = distill(
            teacher, student, batches, config, out_dir=out_dir, resume=resume, overwrite=overwrite
        )
        student.save_pretrained(final)
        tokenizer.save_pretrained(final)
    return result, final
