"""``performers bench embed-score``: throughput and peak memory of ``performers embed`` and
``performers score`` for long proteins, FAVOR+ against the exact twin
(:func:`performers.bench.embed_score.run_embed_score`)."""

from __future__ import annotations

import argparse

from performers.bench.embed_score import DEFAULT_LENGTHS, FAVOR_DEFAULTS, TASKS, Spec, run_embed_score
from performers.cli.common import command_text
from performers.cli.favor_options import add_favor_options

HELP = "embed/score throughput and memory for proteins of 1k-32k residues, FAVOR+ vs exact"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("embed-score", help=HELP, description=HELP)
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="what to measure")
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=["favor", "exact"],
        default=["favor", "exact"],
        help="attention twins",
    )
    parser.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=list(DEFAULT_LENGTHS),
        help="residues per protein (embed, score-clm)",
    )
    parser.add_argument(
        "--pll-lengths",
        type=int,
        nargs="+",
        default=[1024],
        help="residues per protein for score-pll (n masked copies of n + 2 tokens each: quadratic)",
    )
    parser.add_argument(
        "--residues-per-point",
        type=int,
        default=32768,
        help="residues per point: length L runs max(1, this // L) proteins (score-pll: one)",
    )
    parser.add_argument("--model", default=None, help="a trained model directory (default: a random model)")
    parser.add_argument("--d-model", type=int, default=128, help="width of the random model (the demo's)")
    parser.add_argument("--layers", type=int, default=2, help="blocks of the random model")
    parser.add_argument("--heads", type=int, default=4, help="attention heads of the random model")
    parser.add_argument("--d-ff", type=int, default=256, help="feed-forward width of the random model")
    add_favor_options(parser, FAVOR_DEFAULTS, only=("num_features",))
    parser.add_argument(
        "--position",
        choices=["rotary", "learned"],
        default="rotary",
        help="position encoding of the random model",
    )
    parser.add_argument("--max-tokens", type=int, default=16384, help="padded tokens per forward pass")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per point")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="model dtype")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model and the proteins")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per point before giving up")
    parser.add_argument(
        "--out",
        default="docs/results/embed_score.json",
        help="JSON output (the markdown table goes next to it, .md)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    base = Spec(
        task="embed",
        attention="favor",
        length=0,
        proteins=0,
        d_model=args.d_model,
        num_layers=args.layers,
        num_heads=args.heads,
        d_ff=args.d_ff,
        num_features=args.num_features,
        position=args.position,
        model=args.model,
        max_tokens=args.max_tokens,
        threads=args.threads,
        device=args.device,
        dtype=args.dtype,
        seed=args.seed,
    )
    settings = {
        k: v
        for k, v in vars(args).items()
        if k not in ("out", "argv", "run", "command_parser") and not k.startswith("_")
    }
    run_embed_score(
        args.tasks,
        args.backends,
        {"embed": args.lengths, "score-clm": args.lengths, "score-pll": args.pll_lengths},
        base=base,
        residues_per_point=args.residues_per_point,
        timeout=args.timeout,
        out=args.out,
        command=command_text(args),
        settings=settings,
    )
    return 0
