"""``performers bench compat``: all-MiniLM-L6-v2 with FAVOR+ on STS-B, before and after a short
distillation (:func:`performers.bench.compat.run_compat`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from performers.bench.compat import KERNELS, run_compat, write_compat
from performers.cli.common import add_num_features_sweep, command_text

HELP = "all-MiniLM-L6-v2 with FAVOR+: embedding cosine and STS-B Spearman before/after distillation"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("compat", help=HELP, description=HELP)
    parser.add_argument(
        "--kernels", nargs="+", choices=sorted(KERNELS), default=["softmax", "relu"], help="FAVOR kernels"
    )
    add_num_features_sweep(parser, [64, 128, 256, 512])
    parser.add_argument(
        "--distill-features",
        nargs="+",
        type=int,
        default=None,
        help="distil only the configurations with these M (default: all)",
    )
    parser.add_argument("--steps", type=int, default=100, help="distillation steps per configuration")
    parser.add_argument("--batch-size", type=int, default=32, help="sentences per distillation step")
    parser.add_argument("--lr", type=float, default=3e-4, help="peak AdamW learning rate of the distillation")
    parser.add_argument("--seed", type=int, default=0, help="projection and data-order seed")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default="docs/results", help="directory for compat.json and compat.md")
    return parser


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    results = run_compat(
        kernels=tuple(args.kernels),
        features=tuple(args.features),
        distill_features=None if args.distill_features is None else tuple(args.distill_features),
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        threads=args.threads,
    )
    write_compat(results, out, command_text(args))
    print(f"wrote {out / 'compat.json'} and {out / 'compat.md'}")
    return 0
