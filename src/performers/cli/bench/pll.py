"""``performers bench pll``: pseudo-log-likelihood residues/s with the masked copies of all
proteins packed together against one protein at a time (:mod:`performers.bench.pll`)."""

from __future__ import annotations

import argparse

from performers.bench.pll import run_pll_bench
from performers.cli.common import UsageError, command_text
from performers.cli.options import set_threads

HELP = "pseudo-log-likelihood residues/s: masked copies packed across proteins vs one protein at a time"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "pll", help=HELP, description=HELP, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="a masked model directory (default: the demo's size, random weights)"
    )
    parser.add_argument("--proteins", type=int, default=24, help="shipped RefSeq proteins to score")
    parser.add_argument("--max-residues", type=int, default=254, help="longest protein taken")
    parser.add_argument("--max-tokens", type=int, default=16384, help="padded tokens per forward pass")
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds of each schedule (best kept)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default="docs/results/pll.json", help="JSON path (markdown beside it)")
    return parser


def run(args: argparse.Namespace) -> int:
    for option in ("proteins", "max_residues", "max_tokens", "repeats"):
        if getattr(args, option) < 1:
            raise UsageError(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
    set_threads(args)
    record = run_pll_bench(
        out=args.out,
        command=command_text(args),
        model_dir=args.model,
        proteins=args.proteins,
        max_residues=args.max_residues,
        max_tokens=args.max_tokens,
        repeats=args.repeats,
    )
    for row in record["rows"]:
        print(f"{row['schedule']}: {row['residues_per_second']:.0f} residues/s ({row['seconds']:.2f} s)")
    print(f"speed-up {record['speedup']:.2f}x; largest difference {record['max_abs_difference']:.3g}")
    print(f"wrote {args.out} and its .md")
    return 0
