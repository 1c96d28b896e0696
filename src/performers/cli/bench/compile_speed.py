"""``performers bench compile``: eager against ``torch.compile``-d FAVOR attention, forward and
forward+backward, compile time apart (:func:`performers.bench.compile_speed.run_compile_bench`)."""

from __future__ import annotations

import argparse

from performers.bench.compile_speed import DIRECTIONS, run_compile_bench, write_compile_results
from performers.cli.common import UsageError, command_text

HELP = "what torch.compile gains on FAVOR attention: eager vs compiled, compile time and recompiles"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("compile", help=HELP, description=HELP)
    parser.add_argument("--length", type=int, default=2048, help="sequence length L")
    parser.add_argument("--batch", type=int, default=1, help="batch size B")
    parser.add_argument("--heads", type=int, default=4, help="heads H")
    parser.add_argument("--dim", type=int, default=64, help="head dimension D")
    parser.add_argument("--num-features", type=int, default=128, help="random features M")
    parser.add_argument(
        "--directions", nargs="+", choices=DIRECTIONS, default=list(DIRECTIONS),
        help="attention directions to time",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timed repeats (medians)")
    parser.add_argument(
        "--extra-lengths",
        nargs="*",
        type=int,
        default=[1000, 3000],
        help="further lengths run after timing; the graphs compiled for them are reported",
    )
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--out", default="docs/results/compile.json", help="JSON output (markdown next to it)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    for name in ("length", "batch", "heads", "dim", "num_features", "repeats", "threads"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    record = run_compile_bench(
        length=args.length,
        batch=args.batch,
        heads=args.heads,
        dim=args.dim,
        num_features=args.num_features,
        directions=tuple(args.directions),
        repeats=args.repeats,
        extra_lengths=tuple(args.extra_lengths),
        backend=args.backend,
        threads=args.threads,
    )
    write_compile_results(record, args.out, command_text(args))
    print(f"wrote {args.out} and its .md")
    return 0
