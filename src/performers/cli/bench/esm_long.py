"""``performers bench esm-long``: time and peak memory of embedding one protein of 1k-32k
residues with ESM-2-shaped models, FAVOR+ against ``sdpa`` and ``eager``
(:func:`performers.bench.esm_long.run_esm_long`)."""

from __future__ import annotations

import argparse

from performers.bench.esm_long import ATTENTIONS, DEFAULT_LENGTHS, Spec, parse_shape, run_esm_long
from performers.cli.common import UsageError, command_text
from performers.cli.favor_options import add_favor_options, favor_config_from_args

HELP = "ESM-2-shaped models on one protein of 1k-32k residues: FAVOR+ vs sdpa and eager"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("esm-long", help=HELP, description=HELP)
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=["8M", "35M"],
        help="ESM-2 shapes: 8M (6 layers, width 320, 20 heads), 35M (12, 480, 20) or LAYERSxWIDTHxHEADS",
    )
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=list(DEFAULT_LENGTHS), help="residues of the protein"
    )
    parser.add_argument(
        "--attention", nargs="+", choices=ATTENTIONS, default=list(ATTENTIONS), help="attentions to compare"
    )
    add_favor_options(parser, only=("num_features",))
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every point")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per point (median)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=600.0,
        help="skip a length predicted to take longer than this per forward (from the last measured length)",
    )
    parser.add_argument(
        "--max-memory-gib",
        type=float,
        default=8.0,
        help="skip an eager length whose heads x (L+2)^2 float32 attention matrix exceeds this",
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per point before giving up")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, projections and proteins")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="measure every point in this process, not a fresh one each (quick checks only)",
    )
    parser.add_argument(
        "--out", default="docs/results/esm_long.json", help="JSON output (the .md report and .png next to it)"
    )
    return parser


def _check(args: argparse.Namespace) -> None:
    for option, value, least in (
        ("--lengths", min(args.lengths), 1),
        ("--threads", args.threads, 1),
        ("--repeats", args.repeats, 1),
    ):
        if value < least:
            raise UsageError(f"{option} must be >= {least}, got {value}")
    for option, value in (
        ("--max-seconds", args.max_seconds),
        ("--max-memory-gib", args.max_memory_gib),
        ("--timeout", args.timeout),
    ):
        if not value > 0:
            raise UsageError(f"{option} must be > 0, got {value:g}")


def run(args: argparse.Namespace) -> int:
    _check(args)
    shapes = list(dict.fromkeys(parse_shape(s) for s in args.shapes))
    favor = favor_config_from_args(args)  # refuses M = 0: the softmax kernel needs features
    base = Spec(
        shape=shapes[0],
        attention="favor",
        length=0,
        num_features=favor.num_features,
        threads=args.threads,
        repeats=args.repeats,
        seed=args.seed,
    )
    run_esm_long(
        shapes,
        list(dict.fromkeys(args.attention)),
        sorted(set(args.lengths)),
        base=base,
        out=args.out,
        command=command_text(args),
        max_seconds=args.max_seconds,
        max_memory_gib=args.max_memory_gib,
        timeout=args.timeout,
        in_process=args.in_process,
    )
    return 0
