"""What two or more commands share, in one place: option groups (model sizes, the training run,
the data, the device, ``--out``/``--overwrite``/``--resume``, the model and FASTA of ``embed``
and ``score``, the diagnosis of ``diagnose`` and ``convert --check``) and the few steps that turn
parsed options into the library's objects (:class:`~performers.PerformerConfig`,
:class:`~performers.training.TrainingConfig`, a loaded model, FASTA records).

The run description ↔ option table (which option sets each field of a saved run, so a refused
``--resume`` names options) is derived once from the parser: :data:`TRAINING_FIELDS` and
:data:`MODEL_FIELDS` map each config field to the ``dest`` of its option, used both to build the
config and (through :func:`performers.cli.common.options_named`) to name the fields.

Errors are raised, never printed (:mod:`performers.cli.common`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

from performers.cli.common import UsageError, options_named, user_errors_named
from performers.cli.favor_options import add_favor_options, favor_config_from_args
from performers.jobs import DEMO_MODEL, diagnose_model, load_trained, protein_model_config
from performers.jobs.diagnose import DEFAULT_KERNELS
from performers.jobs.embedding import DEFAULT_MAX_TOKENS
from performers.jobs.hf_protein_lm import protein_lm_from_directory
from performers.jobs.protein_models import protein_model_source
from performers.layers import FavorConfig
from performers.layers.favor_config import PROJECTIONS
from performers.models import PerformerConfig
from performers.proteins import FastaRecord, read_fasta
from performers.proteins.cache import prepared_cache
from performers.proteins.prepared_dataset import PreparedDatasetError, is_prepared, verify_prepared
from performers.training import (
    SCHEDULES,
    ResumeMismatchError,
    TrainingConfig,
    checkpoint_period,
    format_changes,
    once_per_job,
    resolve_device,
)

__all__ = [
    "CHECKPOINT_POLICY",
    "DTYPES",
    "MODEL_FIELDS",
    "MODEL_HELP",
    "TRAINING_FIELDS",
    "add_checkpoint_option",
    "add_compute_options",
    "add_crop_option",
    "add_data_options",
    "add_device_option",
    "add_diagnosis_options",
    "add_model_options",
    "add_overwrite_option",
    "add_protein_model_options",
    "add_resume_option",
    "add_run_options",
    "add_training_options",
    "check_output_dir",
    "check_output_file",
    "check_resume_overwrite",
    "checkpoint_every_from_args",
    "compute_device",
    "data_from_args",
    "device_from_args",
    "load_model",
    "model_config_from_args",
    "model_source",
    "read_records",
    "refusals_as_errors",
    "resolve_model",
    "run_diagnosis",
    "run_fields",
    "set_threads",
    "training_config_from_args",
]

# TrainingConfig field -> dest of the option that sets it (fields whose option a command lacks
# keep TrainingConfig's default).
TRAINING_FIELDS: dict[str, str] = {
    "task": "task",
    "max_steps": "steps",
    "batch_size": "batch_size",
    "max_length": "max_length",
    "learning_rate": "lr",
    "warmup_steps": "warmup",
    "schedule": "schedule",
    "eval_every": "eval_every",
    "bf16": "bf16",
    "seed": "seed",
    "concatenate": "concatenate",
    "pack": "pack",
    "num_workers": "workers",
    "context_parallel": "context_parallel",
}

# PerformerConfig field -> dest of the option that sets it.
MODEL_FIELDS: dict[str, str] = {
    "d_model": "d_model",
    "num_layers": "layers",
    "num_heads": "heads",
    "d_ff": "d_ff",
    "dropout": "dropout",
    "position": "position",
    "attention": "attention",
    "max_position_embeddings": "max_length",
}


def add_model_options(parser: argparse.ArgumentParser, favor: FavorConfig | None = None) -> None:
    """Sizes of a protein Performer (defaults: the demo's small model) and the FAVOR options."""
    d = DEMO_MODEL
    group = parser.add_argument_group("model")
    group.add_argument("--d-model", type=int, default=d.d_model, help="model width")
    group.add_argument("--layers", type=int, default=d.num_layers, help="Transformer blocks")
    group.add_argument("--heads", type=int, default=d.num_heads, help="attention heads")
    group.add_argument("--d-ff", type=int, default=d.d_ff, help="feed-forward width")
    group.add_argument("--dropout", type=float, default=d.dropout, help="dropout probability")
    group.add_argument(
        "--position",
        choices=["learned", "rotary"],
        default=d.position,
        help="position encoding: learned (at most --max-length tokens) or rotary (any length)",
    )
    add_favor_options(parser, favor)


def model_config_from_args(args: argparse.Namespace, *, attention: str = "favor") -> PerformerConfig:
    """The :class:`PerformerConfig` of the model options, for proteins of ``--max-length`` tokens.

    Raises:
        UsageError: a value the model cannot take, naming its option.
    """
    favor = favor_config_from_args(args)
    names = options_named(args.command_parser, {**MODEL_FIELDS, "max_length": "max_length"})
    with user_errors_named(names, "model options"):
        return protein_model_config(
            d_model=args.d_model,
            num_layers=args.layers,
            num_heads=args.heads,
            d_ff=args.d_ff,
            dropout=args.dropout,
            max_length=args.max_length,
            position=args.position,
            attention=attention,
            favor=favor,
        )


def add_run_options(parser: argparse.ArgumentParser, *, out: str, device: bool = False) -> None:
    """``--seed``, ``--threads`` (and ``--device`` when the command honours it:
    :func:`add_compute_options`), ``--out`` and ``--config`` (a JSON file of option values)."""
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, data order, masks, projections")
    if device:
        add_compute_options(parser)
    else:  # a benchmark that places its models itself
        _add_threads_option(parser)
    parser.add_argument("--out", default=out, help="output directory")
    parser.add_argument(
        "--config",
        default=None,
        help='JSON file of option values (keys as the long options, e.g. {"d_model": 256}); '
        "options given on the command line win",
    )


def add_device_option(parser: argparse.ArgumentParser, *, default: str | None = "auto") -> None:
    """``--device``: auto (CUDA when available), cpu, cuda, cuda:N."""
    parser.add_argument(
        "--device",
        default=default,
        help="where the model runs: auto (CUDA when available, under torchrun each process's "
        "cuda:LOCAL_RANK; else the CPU), cpu, cuda, cuda:N (default: auto)",
    )


def add_compute_options(parser: argparse.ArgumentParser) -> None:
    """``--threads`` and ``--device``: every command that runs a model takes both, spelled and
    defaulted alike (:func:`compute_device` applies them)."""
    _add_threads_option(parser)
    add_device_option(parser)


def _add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads of torch (torch.set_num_threads; default: torch's, one per core)",
    )


def compute_device(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads`` and return ``--device`` as a device (what every computing command
    does first).

    Raises:
        UsageError: ``--threads`` below 1, or a ``--device`` this machine cannot honour.
    """
    set_threads(args)
    return device_from_args(args)


def device_from_args(args: argparse.Namespace) -> torch.device:
    """``--device`` as a device.

    Raises:
        UsageError: a name this machine cannot honour, naming ``--device``.
    """
    try:
        return resolve_device(args.device)
    except ValueError as error:
        raise UsageError(f"--device: {error}") from None


def add_overwrite_option(parser: argparse.ArgumentParser) -> None:
    """``--overwrite``: start afresh in an ``--out`` that holds an earlier run, moving that run's
    files aside (never deleting them; see :func:`performers.training.run_directory.move_aside`)."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh although --out holds an earlier run: its checkpoints, metrics and final/ "
        "are moved to OUT.old-<time> (without it a fresh run refuses such a directory)",
    )


def add_resume_option(parser: argparse.ArgumentParser, *, may_change: str) -> None:
    """``--resume``: continue from the newest checkpoint in ``--out``."""
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in --out (refused if an option that changes the "
        f"computation differs; {may_change} may change)",
    )


def check_resume_overwrite(args: argparse.Namespace) -> None:
    """Refuse ``--resume`` with ``--overwrite`` (a UsageError)."""
    if args.resume and args.overwrite:
        raise UsageError("give --resume (continue the run) or --overwrite, not both")


@contextmanager
def refusals_as_errors(options: Mapping[str, str]) -> Iterator[None]:
    """Inside: a refused resume (:class:`~performers.training.ResumeMismatchError`) becomes a
    :class:`UsageError` naming each differing field by its option in ``options`` (``{run
    description key: "--option"}``, :func:`run_fields`). The other refusals (another run in
    ``--out``, an earlier run without ``--resume`` or ``--overwrite``, no usable checkpoint) are
    typed input errors already and pass through."""
    try:
        yield
    except ResumeMismatchError as error:
        raise UsageError(
            f"{error.path}: --resume refused, options differ from the run it continues: "
            f"{format_changes(error.changes, options)} (give the run's own values, or start afresh "
            "with --overwrite or another --out)"
        ) from None


def run_fields(
    parser: argparse.ArgumentParser, sections: Mapping[str, Mapping[str, str]], extra: Mapping[str, str]
) -> dict[str, str]:
    """The run description ↔ option table of a command: ``{section + field: "--option"}`` for
    each ``{field: dest}`` of ``sections`` (e.g. ``{"training.": TRAINING_FIELDS}``), from the
    options of ``parser``, plus ``extra`` (fields no single option sets, described in words)."""
    fields = {prefix + name: dest for prefix, table in sections.items() for name, dest in table.items()}
    return {**options_named(parser, fields), **extra}


def add_training_options(
    parser: argparse.ArgumentParser,
    *,
    steps: int,
    out: str,
    favor: FavorConfig | None = None,
    model: bool = True,
    device: bool = False,
) -> None:
    """Everything a protein training run takes: model and FAVOR options (unless ``model`` is
    False: the command loads its model), optimization, data and run options (``--device`` when
    ``device``: the commands that train where it says)."""
    if model:
        add_model_options(parser, favor)
    group = parser.add_argument_group("training")
    group.add_argument(
        "--task", choices=["mlm", "clm"], default="mlm", help="masked (BID) or causal (UNI) LM"
    )
    group.add_argument("--steps", type=int, default=steps, help="optimizer steps")
    group.add_argument("--batch-size", type=int, default=16, help="sequences per optimizer step (global)")
    group.add_argument("--max-length", type=int, default=256, help="tokens per protein crop")
    group.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    group.add_argument("--warmup", type=int, default=20, help="linear warm-up steps before the decay")
    group.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="learning rate after warm-up")
    group.add_argument("--eval-every", type=int, default=25, help="validation every N steps")
    add_checkpoint_option(group)
    group.add_argument("--train-limit", type=int, default=None, help="use only the first N training proteins")
    group.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test proteins")
    group.add_argument("--bf16", action="store_true", help="bf16 autocast")
    group.add_argument(
        "--workers",
        type=int,
        default=1,
        help="loader processes building the next batches while the model trains (0: none; same batches)",
    )
    group.add_argument(
        "--concatenate",
        action="store_true",
        help="train and evaluate on proteins joined into windows of exactly --max-length tokens",
    )
    add_data_options(parser)
    add_run_options(parser, out=out, device=device)


CHECKPOINT_POLICY = "max(--eval-every, --steps // 4): about four per run"


def add_checkpoint_option(parser, *, default: int | None = None) -> None:
    """``--checkpoint-every N``: the checkpoint period in steps (``train``, ``finetune``,
    ``distill``); None (``train``, ``finetune``) is :func:`~performers.training.checkpoint_period`.
    It may change on ``--resume`` (``training.checkpoint_every`` is in
    :data:`~performers.training.SAFE_ON_RESUME`): the computation does not depend on it."""
    policy = CHECKPOINT_POLICY if default is None else "%(default)s"
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=default,
        metavar="N",
        help=f"write a checkpoint every N steps, and at the last step (default: {policy}); "
        "may change on --resume",
    )


def checkpoint_every_from_args(args: argparse.Namespace) -> int:
    """``--checkpoint-every``, or the commands' policy
    (:func:`~performers.training.checkpoint_period`) when not given.

    Raises:
        UsageError: a period below 1.
    """
    every = getattr(args, "checkpoint_every", None)
    if every is None:
        return checkpoint_period(args.steps, args.eval_every)
    if every < 1:
        raise UsageError(f"--checkpoint-every must be >= 1, got {every}")
    return every


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """Where the proteins come from: the shipped corpus (default), a prepared dataset, or FASTA
    files per split (prepared into a cache directory on first use)."""
    group = parser.add_argument_group("data (default: the shipped RefSeq corpus)")
    group.add_argument("--data", default=None, help="a prepared dataset directory (`performers prepare`)")
    group.add_argument("--train", nargs="+", default=None, metavar="FASTA", help="training proteins")
    group.add_argument("--valid", nargs="+", default=None, metavar="FASTA", help="validation proteins")
    group.add_argument("--test", nargs="+", default=None, metavar="FASTA", help="test proteins (optional)")
    group.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="where --train/--valid/--test FASTA files are prepared on first use and reused while "
        "they are unchanged, under DIR/prepared/ (default: $PERFORMERS_CACHE, else ~/.cache/performers)",
    )
    group.add_argument(
        "--verify-data",
        action="store_true",
        help="before training, re-hash every file of the prepared data against its manifest (SHA-256; "
        "reads it all); file sizes are always checked",
    )


def data_from_args(args: argparse.Namespace) -> Path | None:
    """The corpus of the data options: None (the shipped corpus), a prepared directory, or the
    cached prepared dataset of the ``--train/--valid/--test`` files (prepared by rank 0 first
    under torchrun).

    With ``--verify-data`` every file of the prepared data is re-hashed against its manifest
    first (:func:`~performers.proteins.verify_prepared`).

    Raises:
        UsageError: both kinds of data, a directory that is not a prepared dataset, FASTA
            files without both ``--train`` and ``--valid``, or ``--verify-data`` on the shipped
            corpus.
        PreparedDatasetError: ``--verify-data`` found files that changed or are missing.
    """
    corpus = _corpus_from_args(args)
    if getattr(args, "verify_data", False):
        if corpus is None:
            raise UsageError("--verify-data checks prepared data: give --data or --train/--valid files")
        problems = verify_prepared(corpus)
        if problems:
            raise PreparedDatasetError(
                f"--verify-data: {len(problems)} file(s) of {corpus} do not match its manifest: "
                f"{'; '.join(problems)}; prepare the data again"
            )
    return corpus


def _corpus_from_args(args: argparse.Namespace) -> Path | None:
    files = {split: getattr(args, split) for split in ("train", "valid", "test") if getattr(args, split)}
    if args.data and files:
        raise UsageError("give --data or --train/--valid/--test files, not both")
    if args.data:
        if not is_prepared(args.data):
            raise UsageError(f"--data {args.data}: not a prepared dataset (see `performers prepare`)")
        return Path(args.data)
    if not files:
        return None
    if "train" not in files or "valid" not in files:
        raise UsageError("--train and --valid FASTA files are both needed")
    root = getattr(args, "cache_dir", None)
    try:
        return once_per_job(lambda: prepared_cache(files, root=root))
    except ValueError as error:  # OSError and the typed input errors pass as they are
        raise UsageError(str(error)) from None


def training_config_from_args(args: argparse.Namespace, **overrides) -> TrainingConfig:
    """The :class:`TrainingConfig` of the training options (:data:`TRAINING_FIELDS` whose option
    the command has; checkpoints every ``--checkpoint-every`` steps, by default
    :func:`~performers.training.checkpoint_period`;
    ``overrides`` win).

    Raises:
        UsageError: a value the training loop refuses, naming its option (``--steps: ...``).
    """
    values = {field: getattr(args, dest) for field, dest in TRAINING_FIELDS.items() if hasattr(args, dest)}
    values["checkpoint_every"] = checkpoint_every_from_args(args)
    values.update(overrides)
    fields = {field: dest for field, dest in TRAINING_FIELDS.items() if field not in overrides}
    names = options_named(args.command_parser, fields)
    with user_errors_named(names, "training options"):
        return TrainingConfig(**values)


def set_threads(args: argparse.Namespace) -> None:
    """Apply ``--threads`` (when given).

    Raises:
        UsageError: ``--threads`` below 1.
    """
    threads = getattr(args, "threads", None)
    if threads is None:
        return
    if threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


# ---- embed and score: a trained model and a FASTA file ---------------------------------------

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
MODEL_HELP = (
    "a performers model or run directory, or a Hugging Face protein model directory (ESM, ProtBert, "
    "ProtGPT2) with its tokenizer"
)


def add_protein_model_options(parser: argparse.ArgumentParser, *, input_help: str | None = None) -> None:
    """The options ``embed`` and ``score`` share: the model, its input and how it runs.
    ``input_help``: the FASTA input is optional, and this says when it is needed."""
    parser.add_argument("model", help=MODEL_HELP)
    fasta = "FASTA file (plain or gzip); ids are the first word of each header"
    if input_help is None:
        parser.add_argument("input", help=fasta)
    else:
        parser.add_argument("input", nargs="?", default=None, help=f"{fasta}; {input_help}")
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        help="tokens per forward pass: real tokens of a packed row (--pack), else padded tokens of a "
        "batch sorted by length; a longer protein runs alone",
    )
    parser.add_argument(
        "--attention",
        choices=["favor", "exact"],
        default=None,
        help="run the model's FAVOR+ or exact-softmax twin (same weights; default: as trained)",
    )
    add_compute_options(parser)
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="float32", help="parameter and compute dtype"
    )


CROP_HELP = (
    "crop each protein to N tokens including <cls> and <eos> (keeps its first N-2 residues); "
    "default: whole proteins, cropped only where the model's learned positions end (rotary: "
    "never), and counted when it happens — the one cropping rule of docs/guides/proteins.md"
)


def add_crop_option(parser: argparse.ArgumentParser, **kwargs) -> argparse.Action:
    """``--max-length N``: the one cropping rule (:mod:`performers.jobs.cropping`) of
    ``evaluate``, ``embed`` and ``score``."""
    return parser.add_argument("--max-length", type=int, default=None, metavar="N", help=CROP_HELP, **kwargs)


PACK_HELP = (
    "lay the proteins end to end in rows of --max-tokens real tokens (packed: no padding computed, "
    "the same results up to float rounding) or pad each batch (--no-pack); default: pack "
    "with a performers model, pad a Hugging Face one (--pack refuses it)"
)


def add_pack_option(parser: argparse.ArgumentParser, help: str = PACK_HELP) -> argparse.Action:
    """``--pack/--no-pack`` of ``embed``, ``score`` and ``evaluate`` (``pack=`` of their jobs,
    :mod:`performers.jobs.packing`): unset is None, pack when the model can."""
    return parser.add_argument("--pack", action=argparse.BooleanOptionalAction, default=None, help=help)


def model_source(path: str) -> str:
    """``"performers"`` or ``"huggingface"`` for a model directory (its ``config.json`` alone).

    Raises:
        UsageError: a directory that is neither (``cannot load the model: DIR: ...``).
    """
    try:
        return protein_model_source(path)
    except FileNotFoundError:
        return "performers"  # its loader names the missing directory, as it always has
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot load the model: {error}") from None


def load_model(args: argparse.Namespace):
    """``(model, tokenizer)`` of ``args.model`` (twin ``--attention``) on ``--device`` in
    ``--dtype``, with ``--threads`` applied; for a Hugging Face protein model directory ``(ProteinLM, None)``
    (:func:`~performers.jobs.hf_protein_lm.protein_lm_from_directory`), which the embedding
    and scoring jobs take in place of a model and its tokenizer.

    Raises:
        UsageError: a directory that cannot be loaded (``cannot load the model: ...``, naming
            the file), or a ``--device`` this machine lacks.
    """
    device = compute_device(args)
    if model_source(args.model) != "performers":  # Hugging Face, or a fine-tuned model's encoder
        try:
            lm = protein_lm_from_directory(
                args.model, attention=args.attention, device=device, dtype=DTYPES[args.dtype]
            )
        except (OSError, ValueError) as error:
            raise UsageError(f"cannot load the model: {error}") from None
        return lm, None
    try:
        model, tokenizer = load_trained(args.model, attention=args.attention)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot load the model: {error}") from None
    return model.to(device=device, dtype=DTYPES[args.dtype]), tokenizer


def check_output_file(path: str | None, option: str = "--out") -> None:
    """Refuse an output file that could not be written, before any work is done: its directory
    does not exist or is not writable, or a directory stands at its path. None: nothing to check.

    Raises:
        UsageError: naming ``option``, the path and what is wrong.
    """
    if path is None:
        return
    target = Path(path)
    parent = target.resolve().parent
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: no such directory {target.parent}")
    if target.is_dir():
        raise UsageError(f"{option} {path}: is a directory (give a file name)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: cannot write in {target.parent} (permission denied)")


def check_output_dir(path: str | None, option: str = "--out") -> None:
    """Refuse an output directory that could not be made or written, before any work is done: a
    file at its path or at one of its parents, or a nearest existing ancestor that is not
    writable (a missing directory is fine: the command makes it). None: nothing to check.

    Raises:
        UsageError: naming ``option``, the path and what is wrong.
    """
    if path is None:
        return
    target = Path(path).resolve()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == target else f"cannot be made: {existing} is a file"
        raise UsageError(f"{option} {path}: {what}, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: cannot write in {existing} (permission denied)")


def read_records(path: str, option: str = "input") -> list[FastaRecord]:
    """Every record of a FASTA file.

    Raises:
        FastaError: a malformed file (naming the file and line).
        UsageError: a missing or unreadable file, or one with no record, naming ``option``.
    """
    try:
        records = list(read_fasta(path))
    except OSError as error:
        raise UsageError(f"{option} {path}: {error.strerror or error}") from None
    if not records:
        raise UsageError(f"{option} {path}: no FASTA records")
    return records


# ---- diagnose and convert --check ---------------------------------------------------------------

MINILM = "all-MiniLM-L6-v2"


def add_diagnosis_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--data --kernels --tolerance --draws --projection --max-length`` (``convert --check``
    takes them with the prefix ``check-``)."""
    parser.add_argument(
        f"--{prefix}data",
        default=None,
        help="FASTA file (performers models, Hugging Face protein models) or text file, one sentence per "
        "line (Hugging Face text models; default: the shipped STS-B test sentences)",
    )
    parser.add_argument(
        f"--{prefix}kernels",
        nargs="+",
        choices=DEFAULT_KERNELS,
        default=list(DEFAULT_KERNELS),
        help="estimators",
    )
    parser.add_argument(
        f"--{prefix}tolerance", type=float, default=0.05, help="largest relative attention error per head"
    )
    parser.add_argument(f"--{prefix}draws", type=int, default=4, help="projection draws per M")
    parser.add_argument(
        f"--{prefix}projection",
        choices=PROJECTIONS,
        default=FavorConfig().projection,
        help="random projection: block-orthogonal (FAVOR+) or iid Gaussian",
    )
    parser.add_argument(
        f"--{prefix}max-length", type=int, default=None, help="tokens per sequence (default: model max / 128)"
    )


def resolve_model(name: str) -> str:
    """``MODEL`` as a directory: the alias all-MiniLM-L6-v2 is the installed package's copy."""
    if name == MINILM and not Path(name).exists():
        from performers.bench.compat import minilm_path

        return str(minilm_path())
    return name


def run_diagnosis(model: str, **options) -> object:
    """:func:`~performers.jobs.diagnose_model` of ``model`` (a directory or the MiniLM
    alias); its input errors (``DiagnoseError``) are typed input errors."""
    return diagnose_model(resolve_model(model), **options)
