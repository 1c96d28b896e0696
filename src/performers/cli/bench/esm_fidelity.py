"""``performers bench esm-fidelity``: an ESM masked LM trained here with exact attention, converted
to FAVOR+ at several M and distilled: masked accuracy, perplexity and GB1 Spearman of each next
to the exact model (:func:`performers.bench.esm_fidelity.run_esm_fidelity`)."""

from __future__ import annotations

import argparse

from performers.bench.esm_fidelity import FidelityConfig, run_esm_fidelity
from performers.bench.esm_teacher import EsmTeacherConfig
from performers.cli.common import UsageError, add_num_features_sweep, command_text, user_errors_named
from performers.cli.options import set_threads

HELP = "an ESM masked LM, exact vs FAVOR+ converted and distilled: accuracy, perplexity, GB1 Spearman"

# Config field -> option, for the messages of refused values.
TEACHER_OPTIONS = {
    "layers": "--layers",
    "width": "--width",
    "heads": "--heads",
    "steps": "--steps",
    "batch_size": "--batch-size",
    "max_length": "--max-length",
    "learning_rate": "--lr",
    "warmup_steps": "--warmup",
    "seed": "--seed",
}
FIDELITY_OPTIONS = {
    "num_features": "--num-features-sweep",
    "distill_steps": "--distill-steps",
    "distill_learning_rate": "--distill-lr",
    "batch_size": "--batch-size",
    "max_length": "--max-length",
    "eval_proteins": "--eval-proteins",
    "gb1_limit": "--gb1-limit",
    "seed": "--seed",
    "dtype": "--dtype",
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("esm-fidelity", help=HELP, description=HELP)
    parser.add_argument(
        "--teacher",
        default=None,
        help="an ESM masked-LM directory to measure (default: train one into --run-dir)",
    )
    teacher = parser.add_argument_group("the teacher's training (without --teacher)")
    teacher.add_argument("--layers", type=int, default=4, help="transformer blocks")
    teacher.add_argument("--width", type=int, default=128, help="hidden size (feed-forward: 4 x width)")
    teacher.add_argument("--heads", type=int, default=4, help="attention heads")
    teacher.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    teacher.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    teacher.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    add_num_features_sweep(parser, [64, 128, 256], "feature counts M to convert and distil at", aliases=())
    parser.add_argument("--distill-steps", type=int, default=300, help="distillation steps per M")
    parser.add_argument(
        "--distill-lr", type=float, default=1e-4, help="peak learning rate of the distillation"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="crops per step (training, distillation)")
    parser.add_argument(
        "--max-length", type=int, default=128, help="tokens per crop; evaluated proteins are cropped to it"
    )
    parser.add_argument("--eval-proteins", type=int, default=256, help="test-split proteins evaluated")
    parser.add_argument(
        "--gb1-limit", type=int, default=None, help="score the first N GB1 variants (default: all)"
    )
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="evaluation dtype")
    parser.add_argument(
        "--seed", type=int, default=0, help="weights, data order, projections, evaluation masks"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--run-dir", default="runs/esm-fidelity", help="the teacher and the distilled students go here"
    )
    parser.add_argument(
        "--out", default="docs/results/esm_fidelity.json", help="JSON output (the .md report next to it)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    set_threads(args)
    teacher = None
    if args.teacher is None:
        with user_errors_named(TEACHER_OPTIONS, "teacher options"):
            teacher = EsmTeacherConfig(
                **{
                    field: getattr(args, option[2:].replace("-", "_"))
                    for field, option in TEACHER_OPTIONS.items()
                }
            )
    with user_errors_named(FIDELITY_OPTIONS, "fidelity options"):
        config = FidelityConfig(
            num_features=tuple(args.features),
            distill_steps=args.distill_steps,
            distill_learning_rate=args.distill_lr,
            batch_size=args.batch_size,
            max_length=args.max_length,
            eval_proteins=args.eval_proteins,
            gb1_limit=args.gb1_limit,
            seed=args.seed,
            dtype=args.dtype,
        )
    result = run_esm_fidelity(
        config,
        out=args.out,
        run_dir=args.run_dir,
        command=command_text(args),
        teacher=args.teacher,
        teacher_config=teacher,
    )
    for row in result["rows"]:
        print(
            f"{row['model']} ({row['stage']}): accuracy {100 * row['accuracy']:.2f} %, perplexity "
            f"{row['perplexity']:.3f}, GB1 Spearman {row['gb1_spearman']:.3f}"
        )
    print(f"wrote {args.out} and its .md report")
    return 0
