"""``performers bench speed``: time and peak memory of attention against sequence length
(:func:`performers.bench.speed.run_speed`), every point in fresh subprocesses."""

from __future__ import annotations

import argparse

from performers.bench.speed import METHODS, Spec, run_speed
from performers.bench.speed_report import report_only
from performers.cli.common import UsageError, command_text
from performers.cli.favor_options import add_favor_options, favor_config_from_args

HELP = "time and memory vs L: FAVOR+, exact, identity, peers"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("speed", help=HELP, description=HELP)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="what to time")
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[2**i for i in range(9, 17)], help="sequence lengths L"
    )
    parser.add_argument("--batch", type=int, default=1, help="batch size B")
    parser.add_argument("--heads", type=int, default=8, help="heads H")
    parser.add_argument("--dim", type=int, default=64, help="head dimension D")
    add_favor_options(parser, only=("num_features", "kernel", "chunk_size", "block_size"))
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "float64", "bfloat16"], help="dtype"
    )
    parser.add_argument(
        "--autocast",
        action="store_true",
        help="float32 inputs under torch.autocast('cpu', torch.bfloat16) (needs --dtype float32)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every measurement")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per point (median)")
    parser.add_argument(
        "--max-seconds", type=float, default=20.0, help="stop a method past this fwd+bwd time"
    )
    parser.add_argument(
        "--peak-size",
        type=int,
        default=2048,
        help="size of the square matrices whose product measures the machine's GEMM peak",
    )
    parser.add_argument("--out", default="docs/results/speed", help="output directory")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="add these points to the existing OUT/speed.json (replacing the same method and L)",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite OUT/speed.md and the plots from OUT/speed.json"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    if args.report_only:
        for path in report_only(args.out):
            print(f"wrote {path}")
        return 0
    if args.autocast and args.dtype != "float32":
        raise UsageError(f"--autocast needs --dtype float32, got {args.dtype}")
    favor = favor_config_from_args(args)
    base = Spec(
        method="favor",
        length=0,
        batch=args.batch,
        heads=args.heads,
        dim=args.dim,
        num_features=favor.num_features,
        dtype=args.dtype,
        autocast=args.autocast,
        threads=args.threads,
        repeats=args.repeats,
        kernel=favor.kernel,
        chunk_size=favor.chunk_size,
        block_size=favor.block_size,
    )
    run_speed(
        args.methods,
        args.lengths,
        base=base,
        out_dir=args.out,
        command=command_text(args),
        max_seconds=args.max_seconds,
        merge=args.merge,
        peak_size=args.peak_size,
    )
    return 0
