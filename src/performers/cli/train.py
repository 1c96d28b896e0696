"""``performers train``: one protein language model on the shipped corpus, a prepared dataset
(``--data``) or FASTA files (``--train/--valid/--test``)
(:func:`performers.jobs.proteins.train_protein_model`); under ``torchrun
--nproc_per_node=N -m performers train ...`` every process takes its share of each batch (gloo
on CPU, nccl on GPU), and with ``--context-parallel C`` groups of ``C`` processes split each
sequence between them.

``--out`` belongs to the run (a lock, :mod:`performers.training.run_directory`); ``--resume``
refuses options that would continue another computation, naming each as its option (the table,
:func:`option_of`, is derived from the parser)."""

from __future__ import annotations

import argparse
import os

from performers.cli.common import UsageError
from performers.cli.favor_options import FAVOR_FIELDS
from performers.cli.options import (
    MODEL_FIELDS,
    TRAINING_FIELDS,
    add_overwrite_option,
    add_resume_option,
    add_training_options,
    check_output_dir,
    check_resume_overwrite,
    compute_device,
    data_from_args,
    model_config_from_args,
    refusals_as_errors,
    run_fields,
    training_config_from_args,
)
from performers.jobs.proteins import train_protein_model
from performers.jobs.results_file import format_metric
from performers.proteins import training_data_identity
from performers.training import process_group

HELP = (
    "train a protein language model on the shipped corpus, a prepared dataset or FASTA files "
    "(one process, or every process of a torchrun job)"
)


def option_of(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The option of each key of a train run's description (:mod:`performers.training.run_config`),
    for messages; derived from ``parser``."""
    return run_fields(
        parser,
        {
            "training.": {**TRAINING_FIELDS, "data_identity.train_limit": "train_limit"},
            "model.config.": MODEL_FIELDS,
            "model.config.favor.": FAVOR_FIELDS,
        },
        {
            "training.data_identity.train_sha256": "training data (--data/--train)",
            "model.class": "model class (--task)",
        },
    )


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("train", help=HELP, description=HELP)
    add_training_options(parser, steps=1000, out="runs/train", device=True)
    parser.add_argument(
        "--attention", choices=["favor", "exact"], default="favor", help="FAVOR+ or exact softmax attention"
    )
    parser.add_argument(
        "--pack",
        action="store_true",
        help="lay each step's --batch-size proteins (each cropped to --max-length) end to end in "
        "one row (no protein attends to another) instead of padding each to the longest: the "
        "same examples and loss per real token, no padded tokens (metrics.jsonl: padding_fraction)",
    )
    add_resume_option(parser, may_change="--steps, --eval-every, --checkpoint-every, --workers, --threads")
    add_overwrite_option(parser)
    parser.add_argument(
        "--context-parallel",
        type=int,
        default=1,
        metavar="N",
        help="split each sequence over N processes (context parallelism, FAVOR+ only); run under "
        "torchrun --nproc_per_node P with P a multiple of N (data parallel over the other P/N)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.context_parallel > 1 and args.attention != "favor":
        raise UsageError("--context-parallel needs FAVOR+ attention (--attention favor)")
    if args.context_parallel < 1 or world % args.context_parallel:
        raise UsageError(
            f"--context-parallel {args.context_parallel} must divide the number of "
            f"processes ({world}); run under torchrun --nproc_per_node with a multiple of it"
        )
    check_resume_overwrite(args)
    check_output_dir(args.out)
    device = compute_device(args)
    with process_group(device):
        corpus = data_from_args(args)
        identity = training_data_identity(corpus, args.train_limit)
        training = training_config_from_args(args, data_identity=identity)
        with refusals_as_errors(option_of(args.command_parser)):
            result = train_protein_model(
                model_config_from_args(args, attention=args.attention),
                training,
                out_dir=args.out,
                name=args.attention,
                corpus=corpus,
                train_limit=args.train_limit,
                test_limit=args.test_limit,
                resume=args.resume,
                overwrite=args.overwrite,
                device=device,
            )
    if not result.test:  # a rank other than 0
        return 0
    metrics = result.extra["metrics"]
    print(
        f"test {format_metric('accuracy', metrics['accuracy'], percent=True)}, "
        f"{format_metric('perplexity', metrics['perplexity'])}; written to {result.extra['results']}"
    )
    # The last line, as before: what scripts read.
    print(
        f"test accuracy {100 * result.test['accuracy']:.2f}%, perplexity {result.test['perplexity']:.2f}, "
        f"{result.tokens_per_second:,.0f} tokens/s; model saved to {args.out}/final"
    )
    return 0
