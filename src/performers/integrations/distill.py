"""Distil a pretrained Hugging Face Transformer into its FAVOR+ version (the ``[hf]`` extra).

The paper's backwards-compatibility recipe (Choromanski et al. 2021, Sec. 4.3): take the
softmax model's weights, swap its attention for FAVOR+ and recover its quality with a short
fine-tune. Here the fine-tune is a distillation: the *teacher* is the original model (softmax
attention, frozen), the *student* a copy running the ``"favor"`` backend
(:func:`performers.integrations.transformers.performerize`), and the loss is

* ``hidden_weight`` × mean squared error between the hidden states of every layer (the
  embedding output and each block's output, averaged over non-padded tokens and features),
* ``logit_weight`` × ``T²``·KL(teacher ‖ student) of the output distributions at temperature
  ``T`` (Hinton et al. 2015), when the model returns ``logits``,
* ``task_weight`` × the model's own loss, when the batch has ``labels``.

The loop is plain PyTorch with the project's shared training core — AdamW with decay on
matrices only (:func:`performers.training.build_optimizer`), linear warm-up then cosine decay
(:func:`performers.training.lr_factor`), gradient clipping — a tqdm progress bar or log lines,
and atomic checkpoints with exact resume (:mod:`performers.training.checkpoint`: model,
optimizer, scheduler, RNG and data position). As with the trainer, ``out_dir`` is locked for the
run, a fresh run refuses a directory holding an earlier one unless ``overwrite``, and a resume
refuses options that change the computation
(:data:`~performers.training.run_config.SAFE_ON_RESUME` lists what may change).
The FAVOR+ projections stay fixed during distillation (they are regenerated from the config,
see :mod:`performers.integrations.transformers`).

The data: :class:`TextBatches` (texts, e.g. sentences) or :class:`ProteinBatches` (residue
strings for a protein model such as ESM or ProtBert, written as its tokenizer wants them,
:func:`residue_separator`, and cropped to random windows). A masked LM distils without masking:
its hidden states and predictions at every position are the target, no task loss (as for texts).
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from performers.integrations.transformers import performerize
from performers.layers import FavorConfig
from performers.training import (
    NoUsableCheckpointError,
    Preempted,
    PreemptionRequest,
    build_optimizer,
    check_resume,
    describe_run,
    format_changes,
    latest_checkpoint,
    make_scheduler,
    model_device,
    owned,
    preemption_signals,
    recorded_run,
    restore,
    save_checkpoint,
    start_fresh,
    to_device,
)
from performers.utils import IGNORE_INDEX, InputError, sha256
from performers.utils.validation import is_int

__all__ = [
    "DistillConfig",
    "ProteinBatches",
    "TextBatches",
    "distill",
    "distill_data_identity",
    "distillation_loss",
    "make_student",
    "read_texts",
    "residue_separator",
    "with_lm_labels",
]

# The 20 standard amino acids: what a protein tokenizer must read as one known token each.
_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


@dataclass
class DistillConfig:
    """Options of :func:`distill` (all JSON-serializable, recorded in checkpoints)."""

    steps: int = 200
    batch_size: int = 32
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_steps: int = 20
    grad_clip: float = 1.0
    hidden_weight: float = 1.0
    logit_weight: float = 1.0
    task_weight: float = 1.0
    temperature: float = 2.0
    max_length: int = 128
    seed: int = 0
    checkpoint_every: int = 100
    keep_last: int = 2
    log_every: int = 20
    # False: the student runs without dropout while it learns (a deterministic target match);
    # True: in training mode, dropout included.
    dropout: bool = False
    # What the teacher and the texts are, as JSON values (e.g. their SHA-256): not read by the
    # loop; recorded in checkpoints and compared on resume.
    data_identity: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_length", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("hidden_weight", "logit_weight", "task_weight", "learning_rate", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps!r}")
        if not isinstance(self.data_identity, dict):
            raise TypeError(f"data_identity must be a dict, got {type(self.data_identity).__name__}")


def distill_data_identity(
    model: str | os.PathLike,
    texts: Sequence[str] | None = None,
    *,
    proteins: Sequence[str] | None = None,
) -> dict[str, Any]:
    """What a distillation learns from, for ``DistillConfig.data_identity`` (compared on resume):
    the SHA-256 of the teacher's weight files in the directory ``model`` (by name; the name
    itself when ``model`` is not a directory) and of the training data, in order: ``texts``
    (key ``texts_sha256``) or the residue strings of ``proteins`` (key ``proteins_sha256``; a
    FASTA file's sequences, so its headers and line breaks do not count), exactly one of them."""
    if (texts is None) == (proteins is None):
        raise ValueError("give the training texts or the proteins, exactly one of them")
    directory = Path(model)
    weights = sorted(p for p in directory.glob("*") if p.suffix in (".safetensors", ".bin"))
    teacher = {p.name: sha256(p) for p in weights} if directory.is_dir() else str(model)
    key, data = ("texts_sha256", texts) if proteins is None else ("proteins_sha256", proteins)
    return {
        "teacher_sha256": hashlib.sha256(json.dumps(teacher, sort_keys=True).encode()).hexdigest(),
        key: hashlib.sha256(json.dumps(list(data)).encode()).hexdigest(),
    }


def make_student(teacher: nn.Module, config: FavorConfig | None = None) -> nn.Module:
    """A deep copy of ``teacher`` switched to FAVOR attention with ``config`` (see
    :func:`~performers.integrations.transformers.performerize`)."""
    student = copy.deepcopy(teacher)
    student.requires_grad_(True)
    return performerize(student, config)


class TextBatches:
    """Random batches of tokenized texts: ``input_ids``, ``attention_mask`` ``(B, L)``.

    Batch ``i`` is a pure function of ``(seed, i)``, so a resumed run sees the same data.

    Args:
        texts: the training texts (e.g. sentences).
        tokenizer: an HF tokenizer (called with padding and truncation).
        batch_size, max_length: batch rows and the truncation length.
        seed: data-order seed.
    """

    def __init__(self, texts: Sequence[str], tokenizer: Any, batch_size: int, max_length: int, seed: int = 0):
        if len(texts) == 0:
            raise ValueError("no training texts")
        self.texts, self.tokenizer = list(texts), tokenizer
        self.batch_size, self.max_length, self.seed = batch_size, max_length, seed

    def __call__(self, index: int) -> dict[str, Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        rows = torch.randint(len(self.texts), (self.batch_size,), generator=generator).tolist()
        encoded = self.tokenizer(
            [self.texts[i] for i in rows],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def residue_separator(tokenizer: Any) -> str:
    """How ``tokenizer`` wants a protein written: ``""`` (the residues as one string, e.g.
    ``"MKT"``: ESM's ``EsmTokenizer``, which splits a string into its residues) or ``" "`` (one
    residue per word, ``"M K T"``: ProtBert's ``BertTokenizer``, whose WordPiece reads the plain
    string as one unknown word).

    Decided by trying the 20 standard amino acids (special tokens not added): the plain string
    when the tokenizer splits it into 20 known tokens; else the letters separated by spaces when
    the plain string reads as unknown (the tokenizer cannot read it) and the spaced one as 20
    known tokens.

    Raises:
        InputError: the tokenizer reads the plain string as known tokens, but not one per residue
            (e.g. a BPE vocabulary that merges residues, ProtGPT2's: crops count residues as
            tokens, and spaces would give it text it never saw), or cannot read them one known
            token each, plain or with spaces (a text tokenizer, or a protein vocabulary in another
            case than the residues' upper case).
    """
    unknown = getattr(tokenizer, "unk_token_id", None)

    def ids(text: str) -> list[int | None]:
        return tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))

    def one_known_per_residue(found: list[int | None]) -> bool:
        return len(found) == len(_RESIDUES) and unknown not in found and None not in found

    plain = ids(_RESIDUES)
    if one_known_per_residue(plain):
        return ""
    plain_unreadable = unknown in plain or None in plain
    if plain_unreadable and one_known_per_residue(ids(" ".join(_RESIDUES))):
        return " "
    what = (
        "does not read a protein as one known token per residue, neither written plain nor with spaces"
        if plain_unreadable
        else "reads a protein as known tokens, but not one per residue (merged residues?)"
    )
    raise InputError(
        f"the teacher's tokenizer ({type(tokenizer).__name__}) {what} ({_RESIDUES!r} gives "
        f"{len(plain)} tokens); proteins need a tokenizer with one token per residue (ESM, ProtBert)"
    )


class ProteinBatches:
    """Random batches of protein crops tokenized by the teacher's tokenizer: ``input_ids``,
    ``attention_mask`` ``(B, L)``, ``L <= max_length`` (the longest row; shorter rows padded).

    Each row is a protein drawn uniformly; one longer than the window (``max_length`` minus the
    tokenizer's special tokens, e.g. ``<cls>``/``<eos>``) is cropped to a *random* window of
    consecutive residues, so every part of a long protein is seen over a run (a first-tokens crop
    would show only its start). Proteins are written as :func:`residue_separator` finds the
    tokenizer wants them (plain for ESM, space-separated for ProtBert), so each residue is one
    token. Batch ``i`` — rows and crop starts — is a pure function of ``(seed, i)``, so a resumed
    run sees the same data.

    Args:
        sequences: residue strings (upper-case one-letter codes, e.g. FASTA sequences).
        tokenizer: the teacher's HF tokenizer.
        batch_size, max_length: batch rows and tokens per row, special tokens included.
        seed: data-order seed.

    Raises:
        ValueError: no sequences, an empty one, or ``max_length`` leaving no residue.
        InputError: a tokenizer that does not read residues (:func:`residue_separator`).
    """

    def __init__(
        self, sequences: Sequence[str], tokenizer: Any, batch_size: int, max_length: int, seed: int = 0
    ):
        self.sequences = [str(s) for s in sequences]
        if not self.sequences:
            raise ValueError("no training proteins")
        if not all(self.sequences):
            raise ValueError(f"protein {self.sequences.index('')} is empty")
        self.window = max_length - tokenizer.num_special_tokens_to_add(pair=False)
        if self.window < 1:
            raise ValueError(
                f"max_length {max_length} leaves no residue next to the tokenizer's special tokens"
            )
        self.separator = residue_separator(tokenizer)
        self.tokenizer, self.batch_size, self.max_length, self.seed = tokenizer, batch_size, max_length, seed

    def crop(self, sequence: str, generator: torch.Generator) -> str:
        """``sequence``, or a random window of ``self.window`` residues of it when longer."""
        spare = len(sequence) - self.window
        if spare <= 0:
            return sequence
        start = int(torch.randint(spare + 1, (1,), generator=generator))
        return sequence[start : start + self.window]

    def __call__(self, index: int) -> dict[str, Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        rows = torch.randint(len(self.sequences), (self.batch_size,), generator=generator).tolist()
        crops = [self.crop(self.sequences[i], generator) for i in rows]
        encoded = self.tokenizer(
            [self.separator.join(crop) for crop in crops],
            padding=True,
            truncation=True,  # a no-op: the crops fit; kept so no row can exceed max_length
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def with_lm_labels(batches: Callable[[int], dict[str, Tensor]]) -> Callable[[int], dict[str, Tensor]]:
    """``batches`` with next-token ``labels`` added (the inputs, ignored at padding), for a
    causal LM's own loss (the ``task`` part of the distillation loss)."""

    def make(index: int) -> dict[str, Tensor]:
        batch = batches(index)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
        return {**batch, "labels": labels}

    return make


def read_texts(path: str | os.PathLike) -> list[str]:
    """Non-empty lines of a text file (plain or ``.gz``), one text per line.

    Raises:
        InputError: (a ``ValueError``) the file holds no text, is not UTF-8, or is a truncated
            gzip file (the message names the file). A UTF-8 byte-order mark is dropped.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8-sig") as handle:
            texts = [line.strip() for line in handle if line.strip()]
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except (EOFError, gzip.BadGzipFile) as error:
        raise InputError(f"{path}: truncated or corrupt gzip file ({error})") from None
    if not texts:
        raise InputError(f"{path}: no texts")
    return texts


def distillation_loss(
    teacher_out: Any,
    student_out: Any,
    attention_mask: Tensor | None,
    config: DistillConfig,
) -> tuple[Tensor, dict[str, float]]:
    """The distillation loss of one batch and its parts (see the module docstring).

    ``teacher_out``/``student_out`` are HF model outputs computed with
    ``output_hidden_states=True``; ``attention_mask`` ``(B, L)`` marks real tokens (1).
    """
    parts: dict[str, Tensor] = {}
    if config.hidden_weight and student_out.hidden_states is not None:
        keep = None if attention_mask is None else attention_mask.to(student_out.hidden_states[0].dtype)
        errors = []
        for t, s in zip(teacher_out.hidden_states, student_out.hidden_states, strict=True):
            squared = (s - t.detach()).pow(2).mean(-1)  # (B, L)
            errors.append(
                squared.mean() if keep is None else (squared * keep).sum() / keep.sum().clamp_min(1)
            )
        parts["hidden"] = torch.stack(errors).mean()
    logits = getattr(student_out, "logits", None)
    if config.logit_weight and logits is not None:
        temperature = config.temperature
        log_p = nn.functional.log_softmax(teacher_out.logits.detach() / temperature, dim=-1)
        log_q = nn.functional.log_softmax(logits / temperature, dim=-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (B, L) or (B,)
        if attention_mask is not None and kl.shape == attention_mask.shape:
            keep = attention_mask.to(kl.dtype)
            kl = (kl * keep).sum() / keep.sum().clamp_min(1)
        else:
            kl = kl.mean()
        parts["logits"] = kl * temperature**2
    if config.task_weight and getattr(student_out, "loss", None) is not None:
        parts["task"] = student_out.loss
    if not parts:
        raise ValueError("nothing to distil: no hidden states, logits or task loss (all weights 0?)")
    weights = {"hidden": config.hidden_weight, "logits": config.logit_weight, "task": config.task_weight}
    total = sum(weights[name] * value for name, value in parts.items())
    return total, {name: float(value.detach()) for name, value in parts.items()}


# What the loop's own state in a distillation checkpoint must hold.
_STATE_SCHEMA = {"history": list, "running": (float, int, type(None))}


def distill(
    teacher: nn.Module,
    student: nn.Module,
    batches: Callable[[int], dict[str, Tensor]],
    config: DistillConfig,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool | None = None,
    stop_at: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``student`` to reproduce ``teacher``; returns ``{"steps", "loss", "seconds", "history"}``
    (``loss``: the running mean, an exponential average with weight 0.1 on the newest step).

    Args:
        teacher: the original model (run in eval mode without gradients).
        student: its FAVOR+ copy (:func:`make_student`); trained in place, left in eval mode.
        batches: ``batches(i)`` gives batch ``i`` (``input_ids``, ``attention_mask`` and
            optionally ``labels``), e.g. :class:`TextBatches` or :class:`ProteinBatches`.
        config: :class:`DistillConfig`.
        out_dir: checkpoints go to ``out_dir/checkpoints`` every ``config.checkpoint_every``
            steps (none when None); ``out_dir`` is locked for the call, and SIGTERM, SIGINT or
            SIGUSR1 stop the run after the current step with a checkpoint
            (:mod:`performers.training.signals`; without ``out_dir`` signals act as usual).
        resume: continue from the newest checkpoint in ``out_dir`` (exactly: same result as an
            uninterrupted run); refused when an option that changes the computation differs.
        overwrite: what a fresh run does with an earlier run in ``out_dir``: False refuses
            (:class:`~performers.training.RunDirectoryError`), True moves it aside, None (the
            default) moves it aside with a warning.
        stop_at: stop after this step (checkpointed), as if interrupted; None runs to the end.
        log: where progress lines go when stderr is not a terminal.

    Raises:
        performers.utils.DirectoryLockedError: another process runs in ``out_dir``.
        performers.training.RunDirectoryError: a fresh run over an earlier one, ``overwrite=False``.
        performers.training.ResumeMismatchError: ``resume`` with other options (each listed).
        performers.training.NoUsableCheckpointError: ``resume``, but every checkpoint is corrupt.
        performers.training.Preempted: a stop signal arrived; the step reached is checkpointed.
    """
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: continue the run or replace it")
    if resume and out_dir is None:
        raise ValueError("resume=True needs an out_dir")
    if out_dir is None:
        return _distill(teacher, student, batches, config, None, resume, stop_at, log)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with owned(out_dir, log=log), preemption_signals() as request:
        if not resume:
            start_fresh(out_dir, overwrite=overwrite, log=log)
        return _distill(teacher, student, batches, config, Path(out_dir), resume, stop_at, log, request)


def _resume(
    checkpoints: Path, student: nn.Module, optimizer, scheduler, config: DistillConfig, log
) -> tuple[int, list, float | None]:
    """Restore the newest usable checkpoint (checked against this run); ``(step, history,
    running)``, ``(0, [], None)`` when there is none."""
    try:
        found = latest_checkpoint(checkpoints, state_schema=_STATE_SCHEMA, raise_if_unusable=True)
    except NoUsableCheckpointError as error:
        raise NoUsableCheckpointError(
            f"{error}; nothing to resume: start afresh with --overwrite (overwrite=True), which moves "
            "them aside"
        ) from None
    if found is None:
        return 0, [], None
    stored = recorded_run(found.path, found.run, found.state, "distill")
    safe = check_resume(found.path, stored, describe_run("distill", config, student))
    restore(found, student, optimizer, scheduler)
    log(f"resumed from {found.path} (step {found.step})")
    if safe:
        log(f"changed on resume: {format_changes(safe)}")
    return found.step, list(found.state["history"]), found.state["running"]


def _distill(
    teacher: nn.Module,
    student: nn.Module,
    batches: Callable[[int], dict[str, Tensor]],
    config: DistillConfig,
    out_dir: Path | None,
    resume: bool,
    stop_at: int | None,
    log: Callable[[str], None],
    request: PreemptionRequest | None = None,
) -> dict[str, Any]:
    """The loop of :func:`distill` (``out_dir`` already owned and ready; ``request``: the
    :func:`~performers.training.preemption_signals` request that stops it)."""
    teacher.eval()  # run under no_grad below; its parameters are left as they are
    student.train(config.dropout)
    parameters = [p for p in student.parameters() if p.requires_grad]
    optimizer = build_optimizer(student, learning_rate=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = make_scheduler(optimizer, warmup_steps=config.warmup_steps, total_steps=config.steps)
    checkpoints = None if out_dir is None else out_dir / "checkpoints"
    step, history, running = 0, [], None
    if resume:
        step, history, running = _resume(checkpoints, student, optimizer, scheduler, config, log)
    if step == 0:
        torch.manual_seed(config.seed)

    started = time.perf_counter()
    bar = tqdm(total=config.steps, initial=step, desc="distill", disable=not sys.stderr.isatty())
    last = config.steps if stop_at is None else min(stop_at, config.steps)
    device = model_device(student)  # batches are made on the CPU
    while step < last:
        batch = to_device(batches(step), device)
        mask = batch.get("attention_mask")
        with torch.no_grad():
            teacher_out = teacher(
                **{k: v for k, v in batch.items() if k != "labels"}, output_hidden_states=True
            )
        student_out = student(**batch, output_hidden_states=True)
        loss, parts = distillation_loss(teacher_out, student_out, mask, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            nn.utils.clip_grad_norm_(parameters, config.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        value = float(loss.detach())
        running = value if running is None else 0.9 * running + 0.1 * value
        history.append({"step": step, "loss": value, **parts})
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4g}")
        if bar.disable and (step % config.log_every == 0 or step == config.steps):
            log(
                f"step {step}/{config.steps} loss {running:.4g} "
                + " ".join(f"{k} {v:.4g}" for k, v in parts.items())
            )
        stopping = None if request is None else request.signum
        if checkpoints is not None and (stopping or step % config.checkpoint_every == 0 or step == last):
            save_checkpoint(
                checkpoints,
                step=step,
                model=student,
                optimizer=optimizer,
                scheduler=scheduler,
                state={"history": history, "running": running},
                run=describe_run("distill", config, student),
                keep_last=config.keep_last,
            )
        if stopping:
            bar.close()
            student.eval()  # as at the end of a run
            raise Preempted(stopping, step, checkpoints)
    bar.close()
    student.eval()
    return {
        "steps": step,
        "loss": running,
        "seconds": time.perf_counter() - started,
        "history": history,
    }
