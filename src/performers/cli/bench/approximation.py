"""``performers bench approximation``: attention and kernel error of each estimator against
exact attention and the theory (:mod:`performers.bench.approximation`)."""

from __future__ import annotations

import argparse
import time

from performers.bench.approximation import KERNELS, format_table, measure, run_sections, write_json
from performers.bench.approximation_report import format_sections, write_sections
from performers.cli.common import add_num_features_sweep, command_text

HELP = "attention and kernel error of each estimator vs M"
SECTIONS = ["attention", "kernel", "reduction", "proteins", "sklearn"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("approximation", help=HELP, description=HELP)
    p.add_argument("--length", type=int, default=256, help="sequence length L (default 256)")
    p.add_argument("--dim", type=int, default=16, help="head dimension D (default 16)")
    add_num_features_sweep(p, [16, 64, 256])
    p.add_argument("--repeats", type=int, default=8, help="projection draws per row (default 8)")
    p.add_argument("--input-std", type=float, default=0.5, help="std of the random q and k entries")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument(
        "--kernels",
        nargs="+",
        choices=sorted(KERNELS),
        default=["softmax", "softmax-hyperbolic", "trig", "favor++"],
        help="estimators (registry names with an MSE formula)",
    )
    p.add_argument(
        "--sections",
        nargs="+",
        default=["attention"],
        choices=SECTIONS,
        help="what to measure: attention (error on random q/k), kernel (kernel-value MSE per pair), "
        "reduction (FAVOR++ variance reduction), proteins (attention error on trained protein models, "
        "--model), sklearn (RBF kernel approximation on scikit-learn's digits)",
    )
    p.add_argument("--model", nargs="*", default=[], help="trained protein model directories (proteins)")
    p.add_argument("--proteins", type=int, default=16, help="test proteins fed to each model (proteins)")
    p.add_argument("--out", default=None, help="directory for approximation.json, tables.md and PNG plots")
    return p


def _settings(args: argparse.Namespace) -> dict:
    """The options of the attention measurement, recorded with its results."""
    return {
        "length": args.length,
        "dim": args.dim,
        "feature_counts": list(args.features),
        "repeats": args.repeats,
        "input_std": args.input_std,
        "seed": args.seed,
    }


def run(args: argparse.Namespace) -> int:
    if args.sections != ["attention"] or args.out:
        return _sections(args)
    settings = _settings(args)
    start = time.perf_counter()
    rows = measure(
        length=args.length,
        dim=args.dim,
        feature_counts=tuple(args.features),
        repeats=args.repeats,
        input_std=args.input_std,
        seed=args.seed,
        kernels=tuple(args.kernels),
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


def _sections(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    settings = {
        "command": command_text(args),
        "sections": args.sections,
        **_settings(args),
        "kernels": list(args.kernels),
        "models": list(args.model),
        "proteins": args.proteins,
    }
    results = run_sections(
        args.sections,
        length=args.length,
        dim=args.dim,
        feature_counts=args.features,
        repeats=args.repeats,
        input_std=args.input_std,
        seed=args.seed,
        kernels=args.kernels,
        models=args.model,
        num_proteins=args.proteins,
    )
    tables = format_sections(results, settings)
    print(tables)
    for path in write_sections(results, settings, tables, out=args.out, json_path=args.json):
        print(f"wrote {path}")
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0
