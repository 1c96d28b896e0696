"""``performers bench context-parallel``: memory per process, step time and bytes communicated
for one sequence split over 1, 2 and 4 processes, and the longest sequence a 2-layer model
trains on within a memory budget (:func:`performers.bench.context_parallel.run_context_parallel`)."""

from __future__ import annotations

import argparse

from performers.bench.context_parallel import Spec, run_context_parallel
from performers.cli.common import command_text
from performers.cli.favor_options import add_favor_options

HELP = "context parallelism: memory per process, time and bytes sent, 1/2/4 processes; longest L in a budget"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("context-parallel", help=HELP, description=HELP)
    parser.add_argument("--length", type=int, default=131072, help="sequence length L of the op points")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4], help="process counts")
    parser.add_argument("--heads", type=int, default=8, help="heads H")
    parser.add_argument("--head-dim", type=int, default=64, help="head size D")
    add_favor_options(parser, only=("num_features",))
    parser.add_argument("--repeats", type=int, default=2, help="timed forward+backward per op point")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads per process (0: cpus // processes)"
    )
    parser.add_argument(
        "--longest-worlds",
        type=int,
        nargs="*",
        default=[1, 4],
        help="process counts for the longest-sequence search (none: skip it)",
    )
    parser.add_argument("--budget-gib", type=float, default=20.0, help="total memory budget of that search")
    parser.add_argument("--longest-start", type=int, default=16384, help="first L of that search (doubled)")
    parser.add_argument("--longest-max", type=int, default=None, help="largest L that search tries")
    parser.add_argument("--d-model", type=int, default=256, help="width of the 2-layer model of that search")
    parser.add_argument("--d-ff", type=int, default=1024, help="feed-forward width of that model")
    parser.add_argument("--model-heads", type=int, default=4, help="heads of that model")
    parser.add_argument(
        "--out", default="docs/results/distributed.json", help="JSON output (.md and .png beside)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    base = Spec(
        length=args.length,
        heads=args.heads,
        head_dim=args.head_dim,
        features=args.num_features,
        threads=args.threads,
        repeats=args.repeats,
    )
    longest = None
    if args.longest_worlds:
        longest = Spec(
            kind="longest",
            causal=True,
            heads=args.model_heads,
            features=args.num_features,
            d_model=args.d_model,
            d_ff=args.d_ff,
            threads=args.threads,
        )
    run_context_parallel(
        base,
        args.worlds,
        out=args.out,
        longest=longest,
        longest_worlds=args.longest_worlds,
        budget_gib=args.budget_gib,
        longest_start=args.longest_start,
        longest_max=args.longest_max,
        command=command_text(args),
    )
    print(f"wrote {args.out} and its .md / .png")
    return 0
