"""Command line: ``performers demo`` and ``performers bench approximation``."""

from __future__ import annotations

import argparse
import sys
import time

import torch


def _approximation(args: argparse.Namespace) -> int:
    from performers.bench.approximation import format_table, measure, write_json

    settings = {
        "length": args.length,
        "dim": args.dim,
        "feature_counts": list(args.features),
        "repeats": args.repeats,
        "input_std": args.input_std,
        "seed": args.seed,
    }
    start = time.perf_counter()
    rows = measure(
        length=args.length,
        dim=args.dim,
        feature_counts=tuple(args.features),
        repeats=args.repeats,
        input_std=args.input_std,
        seed=args.seed,
    )
    print(
        f"FAVOR estimators vs exact softmax attention: L={args.length}, D={args.dim}, "
        f"inputs N(0, {args.input_std}²), {args.repeats} draws per row, float64"
    )
    print(format_table(rows))
    print(
        "Kernel MSE is over all (query, key) pairs of exp(q·k/√D); the theory column is Lemma 2 "
        "for iid features (orthogonal features should be lower)."
    )
    if args.json:
        write_json(rows, args.json, settings)
        print(f"wrote {args.json}")
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0


def _add_approximation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--length", type=int, default=256, help="sequence length L (default 256)")
    p.add_argument("--dim", type=int, default=16, help="head dimension D (default 16)")
    p.add_argument("--features", type=int, nargs="+", default=[16, 64, 256], help="feature counts M")
    p.add_argument("--repeats", type=int, default=8, help="projection draws per row (default 8)")
    p.add_argument("--input-std", type=float, default=0.5, help="std of the random q and k entries")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.set_defaults(func=_approximation)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="performers", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the README's first command: estimator accuracy vs theory")
    _add_approximation_args(demo)
    bench = sub.add_parser("bench", help="reproducible measurements")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    _add_approximation_args(
        bench_sub.add_parser("approximation", help="attention and kernel error of each estimator vs M")
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
