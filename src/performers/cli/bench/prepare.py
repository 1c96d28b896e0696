"""``performers bench prepare``: throughput and peak memory of ``performers prepare`` on the shipped
corpus and on synthetic corpora of given sizes (:func:`performers.bench.prepare.run_report`)."""

from __future__ import annotations

import argparse

from performers.bench.prepare import parse_size, run_report
from performers.cli.common import command_text

HELP = "prepare throughput (residues/s) and peak memory, shipped corpus and synthetic corpora"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("prepare", help=HELP, description=HELP)
    parser.add_argument(
        "--out", default="docs/results/prepare", help="folder for prepare.json and prepare.md"
    )
    parser.add_argument(
        "--sizes", nargs="*", default=["200MB", "2GB"], help="synthetic corpus sizes (text bytes)"
    )
    parser.add_argument(
        "--workdir", default=None, help="where synthetic corpora and outputs go (default: a temp dir)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic corpora's record order")
    parser.add_argument("--gzip", action="store_true", help="gzip the synthetic corpora (level 1)")
    parser.add_argument(
        "--keep-inputs", action="store_true", help="keep the synthetic corpora for another run"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    run_report(
        args.out,
        sizes=[parse_size(s) for s in args.sizes],
        workdir=args.workdir,
        seed=args.seed,
        compress=args.gzip,
        keep_inputs=args.keep_inputs,
        command=command_text(args),
    )
    return 0
