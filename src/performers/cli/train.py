"""``performers train``: one protein language model on the shipped corpus
(:func:`performers.experiments.run_training`); under ``torchrun --nproc_per_node=N -m performers
train ...`` every process takes its share of each batch (gloo on CPU, nccl on GPU), and with
``--context-parallel C`` groups of ``C`` processes split each sequence between them."""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

from performers.cli.options import (
    add_training_options,
    data_from_args,
    model_config_from_args,
    set_threads,
    training_config_from_args,
)
from performers.experiments import run_training

HELP = "train a protein language model on the shipped corpus"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("train", help=HELP, description=HELP)
    add_training_options(parser, steps=1000, out="runs/train")
    parser.add_argument(
        "--attention", choices=["favor", "exact"], default="favor", help="FAVOR+ or exact softmax attention"
    )
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
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
    distributed = world > 1
    if args.context_parallel > 1 and args.attention != "favor":
        raise SystemExit("performers: error: --context-parallel needs FAVOR+ attention (--attention favor)")
    if args.context_parallel < 1 or world % args.context_parallel:
        raise SystemExit(
            f"performers: error: --context-parallel {args.context_parallel} must divide the number of "
            f"processes ({world}); run under torchrun --nproc_per_node with a multiple of it"
        )
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    set_threads(args)
    try:
        result = run_training(
            model_config_from_args(args, attention=args.attention),
            training_config_from_args(args),
            out_dir=args.out,
            name=args.attention,
            corpus=data_from_args(args),
            train_limit=args.train_limit,
            test_limit=args.test_limit,
            resume=args.resume,
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
