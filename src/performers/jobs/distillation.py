"""The ``performers distill`` job: a Hugging Face model directory distilled into its FAVOR+
version and saved (:func:`distill_model`), on the user's texts or the shipped STS-B training
sentences. The loop is :func:`performers.integrations.distill.distill` (the ``[hf]`` extra)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from performers.integrations.distill import (
    DistillConfig,
    TextBatches,
    distill,
    distill_data_identity,
    make_student,
    read_texts,
    with_lm_labels,
)
from performers.integrations.transformers import load_hf_model
from performers.layers import FavorConfig
from performers.text import load_stsb
from performers.training import owned
from performers.utils import InputError

__all__ = ["DistillationError", "distill_model"]


class DistillationError(InputError):
    """A teacher that cannot be distilled: already a FAVOR+ model, or saved without a tokenizer."""


def distill_model(
    model: str | os.PathLike,
    config: DistillConfig,
    favor: FavorConfig,
    *,
    out_dir: str | os.PathLike,
    texts: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> tuple[dict[str, Any], Path]:
    """Distil the softmax model saved in ``model`` into its FAVOR+ version (``favor``) and save
    the student and the tokenizer in ``out_dir/final``; returns ``(distill's result, final)``.

    ``texts``: one text per line (.txt or .txt.gz); default the STS-B training sentences (sorted,
    unique). ``config.data_identity`` is set here (:func:`distill_data_identity`). A causal LM
    (GPT-2, Llama) with a ``task_weight`` also learns the next token. ``out_dir`` is owned until
    the student is saved.

    Raises:
        FileNotFoundError: ``model`` has no ``config.json``; ``texts`` is missing.
        DistillationError: ``model`` is a FAVOR+ model already, or has no tokenizer.
        ResumeMismatchError, RunDirectoryError, CheckpointError: refusals of the run directory.
    """
    teacher, tokenizer = load_hf_model(model)
    lines = read_texts(texts) if texts else None
    if getattr(teacher.config, "favor_config", None) is not None:
        raise DistillationError(f"{model}: already a FAVOR+ model; distil from the original softmax model")
    if tokenizer is None:
        raise DistillationError(f"{model}: no tokenizer saved with the model")
    if lines is None:
        first, second, _ = load_stsb("train")
        lines = sorted(set(first + second))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = replace(config, data_identity=distill_data_identity(model, lines))
    student = make_student(teacher, favor)
    causal_lm = student.config.model_type in ("gpt2", "llama") and hasattr(student, "lm_head")
    batches = TextBatches(lines, tokenizer, config.batch_size, config.max_length, seed=config.seed)
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
