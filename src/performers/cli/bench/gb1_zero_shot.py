"""``performers bench gb1-zero-shot``: a trained masked model's zero-shot variant scores on GB1
against measured fitness, next to BLOSUM62 and random baselines
(:func:`performers.bench.gb1_zero_shot.run_gb1_zero_shot`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from performers.bench.gb1_zero_shot import run_gb1_zero_shot
from performers.cli.common import command_text
from performers.cli.options import set_threads

HELP = "zero-shot GB1: Spearman of a model's variant scores vs fitness, with BLOSUM62 and random baselines"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("gb1-zero-shot", help=HELP, description=HELP)
    parser.add_argument("model", help="a trained model directory (masked LM: masked marginals)")
    parser.add_argument("--attention", choices=["favor", "exact"], default=None, help="override the backend")
    parser.add_argument("--max-tokens", type=int, default=16384, help="padded tokens per forward pass")
    parser.add_argument("--draws", type=int, default=100, help="random-score draws of the random baseline")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--out", default="docs/results/proteins/gb1_zero_shot", help="folder for .json and .md"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    set_threads(args)
    result = run_gb1_zero_shot(
        args.model,
        out_dir=args.out,
        command=command_text(args),
        attention=args.attention,
        draws=args.draws,
        max_tokens=args.max_tokens,
    )
    for row in result["rows"]:
        print(f"{row['method']}: Spearman {row['spearman_all']:.3f} (all), {row['spearman_test']:.3f} (test)")
    print(f"wrote {Path(args.out)}/gb1_zero_shot.json and gb1_zero_shot.md")
    return 0
