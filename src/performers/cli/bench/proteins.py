"""``performers bench proteins-table | proteins-long | proteins-precision | proteins-backcompat``:
the paper's protein experiments (:mod:`performers.bench.proteins_table`,
:mod:`~performers.bench.proteins_long`, backward compatibility in :mod:`~performers.bench.compat`)
and bfloat16 against float32 training (:mod:`performers.bench.proteins_precision`)."""

from __future__ import annotations

import argparse
import time

from performers.bench.compat import backward_compatibility
from performers.bench.proteins_long import long_context
from performers.bench.proteins_precision import precision_comparison
from performers.bench.proteins_table import table2
from performers.cli.common import register
from performers.cli.options import (
    add_training_options,
    data_from_args,
    model_config_from_args,
    set_threads,
    training_config_from_args,
)

TABLE_HELP = "the paper's Table 2 here: UNI and BID; exact, FAVOR+ softmax and ReLU; equal steps"
LONG_HELP = "concatenated long windows: tokens/s, peak memory and accuracy in equal wall-clock time"
PRECISION_HELP = "bfloat16 autocast vs float32 training: tokens/s and the final loss over seeds"
BACKCOMPAT_HELP = "convert a trained exact-softmax protein MLM to FAVOR+ and fine-tune it (vs from scratch)"


def add_parsers(subparsers) -> None:
    table = subparsers.add_parser("proteins-table", help=TABLE_HELP, description=TABLE_HELP)
    add_training_options(table, steps=400, out="runs/table2")
    table.add_argument(
        "--tasks",
        nargs="+",
        choices=["clm", "mlm"],
        default=["clm", "mlm"],
        help="UNI (clm) and/or BID (mlm)",
    )
    register(table, run_table)

    long = subparsers.add_parser("proteins-long", help=LONG_HELP, description=LONG_HELP)
    add_training_options(long, steps=1, out="runs/long")
    long.add_argument("--minutes", type=float, default=10.0, help="training budget per model (default 10)")
    long.add_argument(
        "--probe-steps", type=int, default=4, help="steps of the speed/memory probe run (first is warm-up)"
    )
    register(long, run_long)

    precision = subparsers.add_parser("proteins-precision", help=PRECISION_HELP, description=PRECISION_HELP)
    add_training_options(precision, steps=200, out="runs/precision")
    precision.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (at least 2)")
    precision.add_argument("--tail", type=int, default=20, help="final loss: mean over the last N steps")
    register(precision, run_precision)

    backcompat = subparsers.add_parser(
        "proteins-backcompat", help=BACKCOMPAT_HELP, description=BACKCOMPAT_HELP
    )
    add_training_options(backcompat, steps=40, out="runs/backcompat", model=False)
    backcompat.add_argument("--exact", required=True, help="run directory of the exact-softmax model")
    register(backcompat, run_backcompat)


def _report(args: argparse.Namespace, experiment, written: str, *positional, **options) -> int:
    """Run one experiment, print its report and what it wrote."""
    set_threads(args)
    start = time.perf_counter()
    report = experiment(
        *positional,
        training_config_from_args(args),
        out_dir=args.out,
        corpus=data_from_args(args),
        train_limit=args.train_limit,
        test_limit=args.test_limit,
        **options,
    )
    print(report)
    print(f"wrote {args.out}/{written} in {time.perf_counter() - start:.0f}s")
    return 0


def run_table(args: argparse.Namespace) -> int:
    return _report(
        args,
        table2,
        "table2.md, table2.json, curves_*.png",
        model_config_from_args(args),
        tasks=tuple(args.tasks),
    )


def run_long(args: argparse.Namespace) -> int:
    return _report(
        args,
        long_context,
        "long.md, long.json, curves_long.png",
        model_config_from_args(args),
        minutes=args.minutes,
        probe_steps=args.probe_steps,
    )


def run_precision(args: argparse.Namespace) -> int:
    return _report(
        args,
        precision_comparison,
        "precision.md, precision.json",
        model_config_from_args(args),
        seeds=tuple(args.seeds),
        tail=args.tail,
    )


def run_backcompat(args: argparse.Namespace) -> int:
    return _report(args, backward_compatibility, "backcompat.md, backcompat.json, backcompat.png", args.exact)
