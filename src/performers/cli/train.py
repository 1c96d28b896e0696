"""``performers train``: one protein language model on the shipped corpus
(:func:`performers.experiments.run_training`); under ``torchrun --nproc_per_node=N -m performers
train ...`` every process takes its share of each batch (gloo on CPU, nccl on GPU), and with
``--context-parallel C`` groups of ``C`` processes split each sequence between them.

``--out`` belongs to the run (a lock, :mod:`performers.training.run_directory`); ``--resume``
refuses options that would continue another computation, naming each as its option."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from performers.cli.favor_options import FAVOR_OPTIONS
from performers.cli.options import (
    add_device_option,
    add_overwrite_option,
    add_training_options,
    data_from_args,
    device_from_args,
    model_config_from_args,
    set_threads,
    training_config_from_args,
)
from performers.experiments import run_training
from performers.proteins import default_corpus
from performers.proteins.prepared_dataset import MANIFEST
from performers.training import (
    CheckpointError,
    ResumeMismatchError,
    RunDirectoryError,
    format_changes,
    owned,
    start_fresh,
)
from performers.utils import DirectoryLockedError, sha256

HELP = "train a protein language model on the shipped corpus"

# The option of each key of a run description (performers.training.run_config), for messages.
OPTION_OF: dict[str, str] = {
    "training.task": "--task",
    "training.max_steps": "--steps",
    "training.batch_size": "--batch-size",
    "training.max_length": "--max-length",
    "training.learning_rate": "--lr",
    "training.warmup_steps": "--warmup",
    "training.schedule": "--schedule",
    "training.eval_every": "--eval-every",
    "training.bf16": "--bf16",
    "training.seed": "--seed",
    "training.concatenate": "--concatenate",
    "training.num_workers": "--workers",
    "training.context_parallel": "--context-parallel",
    "training.data_identity.train_sha256": "training data (--data/--train)",
    "training.data_identity.train_limit": "--train-limit",
    "model.class": "model class (--task)",
    "model.config.d_model": "--d-model",
    "model.config.num_layers": "--layers",
    "model.config.num_heads": "--heads",
    "model.config.d_ff": "--d-ff",
    "model.config.dropout": "--dropout",
    "model.config.position": "--position",
    "model.config.attention": "--attention",
    "model.config.max_position_embeddings": "--max-length",
    **{
        f"model.config.favor.{name}": "--projection-seed" if name == "seed" else f"--{name.replace('_', '-')}"
        for name in FAVOR_OPTIONS
    },
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("train", help=HELP, description=HELP)
    add_training_options(parser, steps=1000, out="runs/train")
    parser.add_argument(
        "--attention", choices=["favor", "exact"], default="favor", help="FAVOR+ or exact softmax attention"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in --out (refused if an option that changes the "
        "computation differs; --steps, --eval-every, --workers, --threads may change)",
    )
    add_overwrite_option(parser)
    add_device_option(parser)
    parser.add_argument(
        "--context-parallel",
        type=int,
        default=1,
        metavar="N",
        help="split each sequence over N processes (context parallelism, FAVOR+ only); run under "
        "torchrun --nproc_per_node P with P a multiple of N (data parallel over the other P/N)",
    )
    return parser


def data_identity(corpus: Path | None, train_limit: int | None) -> dict[str, Any]:
    """What the training examples are: the SHA-256 of the training split's entry in a prepared
    dataset's manifest (its files' SHA-256 and counts: the same data prepared twice gives the
    same identity) or of the shipped corpus file, and ``--train-limit``."""
    if corpus is None:
        digest = sha256(default_corpus())
    else:
        manifest = json.loads((Path(corpus) / MANIFEST).read_text())
        entry = {key: manifest.get(key) for key in ("format_version", "token_dtype", "vocab_size")}
        entry["train"] = manifest["splits"].get("train")
        digest = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()
    return {"train_sha256": digest, "train_limit": train_limit}


@contextlib.contextmanager
def refusals_as_errors(options: Mapping[str, str]) -> Iterator[None]:
    """Turn what a run refuses (another run in ``--out``, an earlier run without ``--resume`` or
    ``--overwrite``, a resume with other options, no usable checkpoint) into a one-line
    ``SystemExit`` naming the options."""
    try:
        yield
    except ResumeMismatchError as error:
        raise SystemExit(
            f"performers: error: {error.path}: --resume refused, options differ from the run it "
            f"continues: {format_changes(error.changes, options)} (give the run's own values, or start "
            "afresh with --overwrite or another --out)"
        ) from None
    except (DirectoryLockedError, RunDirectoryError, CheckpointError) as error:
        raise SystemExit(f"performers: error: {error}") from None


def run(args: argparse.Namespace) -> int:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    distributed = world > 1
    if args.context_parallel > 1 and args.attention != "favor":
        raise SystemExit("performers: error: --context-parallel needs FAVOR+ attention (--attention favor)")
    if args.context_parallel < 1 or world % args.context_parallel:
        raise SystemExit(
            f"performers: error: --context-parallel {args.context_parallel} must divide the number of "
            f"processes ({world}); run under torchrun --nproc_per_node with a multiple of it"
        )
    if args.resume and args.overwrite:
        raise SystemExit("performers: error: give --resume (continue the run) or --overwrite, not both")
    device = device_from_args(args, "train")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and the default CUDA stream of this process
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    set_threads(args)
    rank = dist.get_rank() if distributed else 0
    try:
        corpus = data_from_args(args)
        training = training_config_from_args(args, data_identity=data_identity(corpus, args.train_limit))
        # Rank 0 owns --out from the overwrite to the saved model (the trainer locks it again).
        ownership = owned(args.out) if rank == 0 else contextlib.nullcontext()
        with refusals_as_errors(OPTION_OF), ownership:
            if not args.resume:  # an earlier run in --out: refused, or moved aside (--overwrite)
                start_fresh(args.out, overwrite=args.overwrite, clear=rank == 0)
            if distributed:
                dist.barrier()  # the earlier run is moved before any process looks
            result = run_training(
                model_config_from_args(args, attention=args.attention),
                training,
                out_dir=args.out,
                name=args.attention,
                corpus=corpus,
                train_limit=args.train_limit,
                test_limit=args.test_limit,
                resume=args.resume,
                device=device,
            )
    finally:
        if distributed:
            dist.destroy_process_group()
    if not result.test:  # a rank other than 0
        return 0
    print(
        f"test accuracy {100 * result.test['accuracy']:.2f}%, perplexity {result.test['perplexity']:.2f}, "
        f"{result.tokens_per_second:,.0f} tokens/s; model saved to {args.out}/final"
    )
    return 0
