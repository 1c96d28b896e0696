"""``performers bench packing``: padded against packed training batches — real tokens/s,
padding fraction, peak memory and loss per real token (:mod:`performers.bench.packing`)."""

from __future__ import annotations

import argparse
import time

from performers.bench.packing import ATTENTIONS, packing_comparison
from performers.cli.common import UsageError
from performers.cli.options import (
    add_training_options,
    data_from_args,
    model_config_from_args,
    set_threads,
    training_config_from_args,
)

HELP = "padded vs packed training batches: real tokens/s, padding fraction, peak memory, loss per real token"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("packing", help=HELP, description=HELP)
    # The Table-2 model size of docs/results/proteins.md (d_ff 512, M = 128).
    add_training_options(parser, steps=300, out="runs/packing")
    # --max-length is set per run from --crops; given on its own it would be ignored, so refused.
    parser.set_defaults(d_ff=512, num_features=128, max_length=None)
    parser.add_argument(
        "--crops", type=int, nargs="+", default=[256, 1024], help="crops (--max-length) to compare at"
    )
    parser.add_argument(
        "--attention",
        nargs="+",
        choices=ATTENTIONS,
        default=list(ATTENTIONS),
        help="attention backends to compare with",
    )
    parser.add_argument(
        "--warmup-steps", type=int, default=5, help="first steps left out of the median tokens/s"
    )
    parser.add_argument("--tail", type=int, default=20, help="final loss: mean over the last N steps")
    parser.add_argument(
        "--memory-steps",
        type=int,
        default=20,
        help="steps of each run's separate peak-memory run (allocations returned to the OS)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    if args.max_length is not None:
        raise UsageError(f"--max-length {args.max_length}: give the crops to compare as --crops")
    if args.concatenate:
        raise UsageError(
            "--concatenate: packing lays whole proteins in rows; windows have no padding to pack"
        )
    if min(args.crops) < 3:
        raise UsageError(f"--crops: each must be >= 3 (<cls>, a residue, <eos>), got {args.crops}")
    if not 0 <= args.warmup_steps < args.steps:
        raise UsageError(
            f"--warmup-steps must be in [0, --steps {args.steps}) so that a timed step is left, "
            f"got {args.warmup_steps}"
        )
    if args.tail < 1:
        raise UsageError(f"--tail must be >= 1, got {args.tail}")
    if args.memory_steps < 1:
        raise UsageError(f"--memory-steps must be >= 1, got {args.memory_steps}")
    set_threads(args)
    args.max_length = max(args.crops)  # the model and training options are checked at the longest
    start = time.perf_counter()
    report = packing_comparison(
        model_config_from_args(args),
        training_config_from_args(args),
        out_dir=args.out,
        crops=tuple(args.crops),
        attentions=tuple(dict.fromkeys(args.attention)),
        warmup_steps=args.warmup_steps,
        tail=args.tail,
        memory_steps=args.memory_steps,
        corpus=data_from_args(args),
        train_limit=args.train_limit,
        test_limit=args.test_limit,
    )
    print(report)
    print(f"wrote {args.out}/packing.md, packing.json, packing.png in {time.perf_counter() - start:.0f}s")
    return 0
