"""Options shared by the protein commands (model sizes, the training run) and the one place
that turns them into a :class:`~performers.PerformerConfig` and a
:class:`~performers.training.TrainingConfig`."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from performers.cli.favor_options import add_favor_options, favor_config_from_args
from performers.experiments import DEMO_MODEL, protein_model_config
from performers.layers import FavorConfig
from performers.models import PerformerConfig
from performers.proteins.cache import prepared_cache
from performers.proteins.prepared_dataset import is_prepared
from performers.training import SCHEDULES, TrainingConfig, resolve_device

__all__ = [
    "add_data_options",
    "add_device_option",
    "add_model_options",
    "add_overwrite_option",
    "add_run_options",
    "add_training_options",
    "data_from_args",
    "device_from_args",
    "model_config_from_args",
    "set_threads",
    "training_config_from_args",
]


def add_model_options(parser: argparse.ArgumentParser, favor: FavorConfig | None = None) -> None:
    """Sizes of a protein Performer (defaults: the demo's small model) and the FAVOR options."""
    d = DEMO_MODEL
    group = parser.add_argument_group("model")
    group.add_argument("--d-model", type=int, default=d.d_model, help=f"model width (default {d.d_model})")
    group.add_argument(
        "--layers", type=int, default=d.num_layers, help=f"Transformer blocks (default {d.num_layers})"
    )
    group.add_argument(
        "--heads", type=int, default=d.num_heads, help=f"attention heads (default {d.num_heads})"
    )
    group.add_argument("--d-ff", type=int, default=d.d_ff, help=f"feed-forward width (default {d.d_ff})")
    group.add_argument(
        "--dropout", type=float, default=d.dropout, help=f"dropout probability (default {d.dropout})"
    )
    group.add_argument(
        "--position",
        choices=["learned", "rotary"],
        default=d.position,
        help="position encoding: learned (at most --max-length tokens) or rotary (any length)",
    )
    add_favor_options(parser, favor)


def model_config_from_args(args: argparse.Namespace, *, attention: str = "favor") -> PerformerConfig:
    """The :class:`PerformerConfig` of the model options, for proteins of ``--max-length`` tokens."""
    try:
        return protein_model_config(
            d_model=args.d_model,
            num_layers=args.layers,
            num_heads=args.heads,
            d_ff=args.d_ff,
            dropout=args.dropout,
            max_length=args.max_length,
            position=args.position,
            attention=attention,
            favor=favor_config_from_args(args),
        )
    except (TypeError, ValueError) as error:
        raise SystemExit(f"performers: error: model options: {error}") from None


def add_run_options(parser: argparse.ArgumentParser, *, out: str) -> None:
    """``--seed``, ``--threads``, ``--out`` and ``--config`` (a JSON file of option values)."""
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, data order, masks, projections")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", default=out, help=f"output directory (default {out})")
    parser.add_argument(
        "--config",
        default=None,
        help='JSON file of option values (keys as the long options, e.g. {"d_model": 256}); '
        "options given on the command line win",
    )


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="where the model trains: auto (default: CUDA when available, under torchrun each "
        "process's cuda:LOCAL_RANK; else the CPU), cpu, cuda, cuda:N",
    )


def device_from_args(args: argparse.Namespace, command: str) -> torch.device:
    """``--device`` as a device; a name this machine cannot honour ends the command, naming it."""
    try:
        return resolve_device(args.device)
    except ValueError as error:
        raise SystemExit(f"performers {command}: error: --device: {error}") from None


def add_overwrite_option(parser: argparse.ArgumentParser) -> None:
    """``--overwrite``: start afresh in an ``--out`` that holds an earlier run, moving that run's
    files aside (never deleting them; see :func:`performers.training.run_directory.move_aside`)."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh although --out holds an earlier run: its checkpoints, metrics and final/ "
        "are moved to OUT.old-<time> (without it a fresh run refuses such a directory)",
    )


def add_training_options(
    parser: argparse.ArgumentParser,
    *,
    steps: int,
    out: str,
    favor: FavorConfig | None = None,
    model: bool = True,
) -> None:
    """Everything a protein training run takes: model and FAVOR options (unless ``model`` is
    False: the command loads its model), optimization, data and run options."""
    if model:
        add_model_options(parser, favor)
    group = parser.add_argument_group("training")
    group.add_argument(
        "--task", choices=["mlm", "clm"], default="mlm", help="masked (BID) or causal (UNI) LM"
    )
    group.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
    group.add_argument("--batch-size", type=int, default=16, help="sequences per optimizer step (global)")
    group.add_argument("--max-length", type=int, default=256, help="tokens per protein crop")
    group.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    group.add_argument("--warmup", type=int, default=20, help="linear warm-up steps before the decay")
    group.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="learning rate after warm-up")
    group.add_argument("--eval-every", type=int, default=25, help="validation every N steps")
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
    add_run_options(parser, out=out)


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """Where the proteins come from: the shipped corpus (default), a prepared dataset, or FASTA
    files per split (prepared into a cache directory on first use)."""
    group = parser.add_argument_group("data (default: the shipped RefSeq corpus)")
    group.add_argument("--data", default=None, help="a prepared dataset directory (`performers prepare`)")
    group.add_argument("--train", nargs="+", default=None, metavar="FASTA", help="training proteins")
    group.add_argument("--valid", nargs="+", default=None, metavar="FASTA", help="validation proteins")
    group.add_argument("--test", nargs="+", default=None, metavar="FASTA", help="test proteins (optional)")


def data_from_args(args: argparse.Namespace) -> Path | None:
    """The corpus of the data options: None (the shipped corpus), a prepared directory, or the
    cached prepared dataset of the ``--train/--valid/--test`` files."""
    files = {split: getattr(args, split) for split in ("train", "valid", "test") if getattr(args, split)}
    if args.data and files:
        raise SystemExit("performers: error: give --data or --train/--valid/--test files, not both")
    if args.data:
        if not is_prepared(args.data):
            raise SystemExit(
                f"performers: error: --data {args.data}: not a prepared dataset (see `performers prepare`)"
            )
        return Path(args.data)
    if not files:
        return None
    if "train" not in files or "valid" not in files:
        raise SystemExit("performers: error: --train and --valid FASTA files are both needed")
    try:
        return once_per_job(lambda: prepared_cache(files))
    except (OSError, ValueError) as error:
        raise SystemExit(f"performers: error: {error}") from None


def once_per_job(make):
    """``make()`` in rank 0 first, then in the other processes of a torchrun job (which then find
    its result); just ``make()`` in a single process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return make()
    if dist.get_rank() == 0:
        result = make()
        dist.barrier()
        return result
    dist.barrier()
    return make()


def training_config_from_args(args: argparse.Namespace, **overrides) -> TrainingConfig:
    """The :class:`TrainingConfig` of the training options (``overrides`` win)."""
    values = dict(
        task=args.task,
        max_steps=args.steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        learning_rate=args.lr,
        warmup_steps=args.warmup,
        schedule=args.schedule,
        eval_every=args.eval_every,
        checkpoint_every=max(args.eval_every, args.steps // 4),
        bf16=args.bf16,
        seed=args.seed,
        concatenate=args.concatenate,
        num_workers=args.workers,
        context_parallel=getattr(args, "context_parallel", 1),
    )
    try:
        return TrainingConfig(**{**values, **overrides})
    except (TypeError, ValueError) as error:
        raise SystemExit(f"performers: error: training options: {error}") from None


def set_threads(args: argparse.Namespace) -> None:
    """Apply ``--threads`` (when given)."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
