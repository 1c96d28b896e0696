"""``performers bench loader``: the trainer's batch loader against the model it feeds, in tokens
per second (:func:`performers.bench.loader.run_loader_bench`)."""

from __future__ import annotations

import argparse

from performers.bench.loader import run_loader_bench
from performers.cli.common import command_text

HELP = "batch loader tokens/s vs model training tokens/s (demo and L = 8192 settings)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("loader", help=HELP, description=HELP)
    parser.add_argument(
        "--data",
        default=None,
        help="a prepared dataset (default: the shipped corpus, prepared in a temp dir)",
    )
    parser.add_argument("--loader-batches", type=int, default=200, help="batches timed from the loader")
    parser.add_argument("--model-steps", type=int, default=5, help="training steps timed (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default="docs/results/loader.json", help="JSON output (markdown next to it)")
    return parser


def run(args: argparse.Namespace) -> int:
    options = {"loader_batches": args.loader_batches, "model_steps": args.model_steps}
    rows = run_loader_bench(args.data, args.out, command=command_text(args), threads=args.threads, **options)
    for row in rows:
        print(
            f"{row['setting']['name']}: loader {row['loader_tokens_per_second']:,.0f} tokens/s, "
            f"model {row['model_tokens_per_second']:,.0f} tokens/s: {row['ratio']:,.0f}x"
        )
    print(f"wrote {args.out} and its .md")
    return 0
