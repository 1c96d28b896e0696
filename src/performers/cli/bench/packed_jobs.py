"""``performers bench packed-jobs``: ``embed``, ``score`` and ``evaluate`` packed vs padded on
FASTAs sampled from the shipped corpus (:func:`performers.bench.packed_jobs.run_packed_jobs`)."""

from __future__ import annotations

import argparse

from performers.bench.packed_jobs import DEFAULT_SIZES, TASKS, Settings, run_packed_jobs
from performers.cli.common import UsageError, command_text

HELP = "embed/score/evaluate of mixed-length FASTAs: packed rows vs padded batches, proteins/s"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("packed-jobs", help=HELP, description=HELP)
    defaults = Settings()
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="commands to time")
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=list(DEFAULT_SIZES),
        help="proteins per FASTA, sampled from the shipped corpus (smaller samples nest in larger)",
    )
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="packed/padded pairs per point")
    parser.add_argument("--d-model", type=int, default=defaults.d_model, help="width of the random models")
    parser.add_argument("--layers", type=int, default=defaults.num_layers, help="blocks of the random models")
    parser.add_argument("--heads", type=int, default=defaults.num_heads, help="attention heads")
    parser.add_argument("--d-ff", type=int, default=defaults.d_ff, help="feed-forward width")
    parser.add_argument("--num-features", type=int, default=defaults.num_features, help="FAVOR+ features M")
    parser.add_argument(
        "--max-tokens", type=int, default=defaults.max_tokens, help="embed/score tokens per forward pass"
    )
    parser.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help="evaluate's proteins per batch"
    )
    parser.add_argument("--threads", type=int, default=defaults.threads, help="torch threads per command")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the models and the sample")
    parser.add_argument("--timeout", type=float, default=defaults.timeout, help="seconds per command run")
    parser.add_argument("--corpus", default=None, help="a FASTA to sample from instead of the shipped corpus")
    parser.add_argument(
        "--out",
        default="docs/results/packed_jobs.json",
        help="JSON output (the markdown table goes next to it, .md)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    for name in ("repeats", "d_model", "layers", "heads", "d_ff", "num_features", "max_tokens", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if min(args.sizes) < 1:
        raise UsageError(f"--sizes must be >= 1, got {min(args.sizes)}")
    settings = Settings(
        d_model=args.d_model,
        num_layers=args.layers,
        num_heads=args.heads,
        d_ff=args.d_ff,
        num_features=args.num_features,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        threads=args.threads,
        repeats=args.repeats,
        seed=args.seed,
        timeout=args.timeout,
    )
    try:
        run_packed_jobs(
            args.tasks, args.sizes, settings, out=args.out, command=command_text(args), corpus=args.corpus
        )
    except ValueError as error:  # more proteins asked for than the corpus holds
        raise UsageError(str(error)) from None
    return 0
