"""``performers bench packed-ops``: a packed attention call (``cu_seqlens``) against one call on
the same tokens without boundaries and one call per sequence (:mod:`performers.bench.packed_ops`)."""

from __future__ import annotations

import argparse

from performers.bench.packed_ops import KERNEL_NAMES, PackedOpsSettings, run_packed_ops_bench
from performers.cli.common import UsageError, command_text

HELP = "packed attention ops (cu_seqlens) vs one unpacked call and a per-sequence loop"

_DEFAULTS = PackedOpsSettings()


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("packed-ops", help=HELP, description=HELP)
    parser.add_argument(
        "--sequences", type=int, default=_DEFAULTS.sequences, help="sequences packed in the row (N)"
    )
    parser.add_argument(
        "--median-length", type=int, default=_DEFAULTS.median_length, help="median of the log-normal lengths"
    )
    parser.add_argument("--max-length", type=int, default=_DEFAULTS.max_length, help="lengths are cut here")
    parser.add_argument("--heads", type=int, default=_DEFAULTS.heads, help="attention heads (H)")
    parser.add_argument("--head-dim", type=int, default=_DEFAULTS.head_dim, help="head dimension (D)")
    parser.add_argument("--num-features", type=int, default=_DEFAULTS.features, help="random features (M)")
    parser.add_argument(
        "--repeats", type=int, default=_DEFAULTS.repeats, help="timed repeats per call (paired)"
    )
    parser.add_argument(
        "--kernel",
        choices=KERNEL_NAMES,
        default=_DEFAULTS.kernel,
        help="feature map (softmax takes the fused paths; favor++, relu, trig, ... the generic ones)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default="runs/packed_ops.json", help="JSON output (markdown next to it)")
    return parser


def run(args: argparse.Namespace) -> int:
    values = {
        "--sequences": args.sequences,
        "--median-length": args.median_length,
        "--max-length": args.max_length,
        "--heads": args.heads,
        "--head-dim": args.head_dim,
        "--num-features": args.num_features,
        "--repeats": args.repeats,
        "--threads": args.threads,
    }
    for option, value in values.items():
        if value < 1:
            raise UsageError(f"{option} must be >= 1, got {value}")
    settings = PackedOpsSettings(
        sequences=args.sequences,
        median_length=args.median_length,
        max_length=args.max_length,
        heads=args.heads,
        head_dim=args.head_dim,
        features=args.num_features,
        repeats=args.repeats,
        kernel=args.kernel,
    )
    print(run_packed_ops_bench(args.out, settings=settings, threads=args.threads, command=command_text(args)))
    print(f"wrote {args.out} and its .md")
    return 0
