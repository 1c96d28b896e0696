"""``performers finetune``: per-residue secondary structure (Q3) on FLIP with a linear head on a
trained or randomly initialized encoder (:func:`performers.experiments.finetune`)."""

from __future__ import annotations

import argparse

import torch

from performers.cli.options import add_model_options, add_run_options, model_config_from_args, set_threads
from performers.experiments import finetune, load_trained
from performers.models import PerformerModel
from performers.training import SCHEDULES, TrainingConfig

HELP = "secondary structure (Q3) with a per-residue head on FLIP"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("finetune", help=HELP, description=HELP)
    parser.add_argument("--pretrained", default=None, help="trained model directory (default: random init)")
    parser.add_argument("--freeze", action="store_true", help="train the head only (a linear probe)")
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="with --pretrained: its architecture, randomly initialized (the control run)",
    )
    group = parser.add_argument_group("fine-tuning")
    group.add_argument("--steps", type=int, default=200, help="optimizer steps")
    group.add_argument("--batch-size", type=int, default=16, help="proteins per step")
    group.add_argument("--max-length", type=int, default=256, help="tokens per protein crop")
    group.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    group.add_argument("--warmup", type=int, default=0, help="linear warm-up steps")
    group.add_argument(
        "--schedule", choices=SCHEDULES, default="constant", help="learning rate after warm-up"
    )
    group.add_argument("--eval-every", type=int, default=50, help="validation Q3 every N steps")
    group.add_argument("--train-limit", type=int, default=None, help="use only the first N training proteins")
    group.add_argument("--test-limit", type=int, default=None, help="score only the first N test proteins")
    add_model_options(parser)  # the random-init encoder
    add_run_options(parser, out="runs/finetune")
    return parser


def _encoder(args: argparse.Namespace) -> tuple[PerformerModel, str]:
    if args.pretrained and args.random_init:
        # The control: the pretrained model's exact architecture, randomly initialized.
        config = load_trained(args.pretrained)[0].config
        torch.manual_seed(args.seed)
        return PerformerModel(config), f"random initialization (architecture of {args.pretrained})"
    if args.pretrained:
        model, _ = load_trained(args.pretrained)
        return (model.model if hasattr(model, "model") else model), args.pretrained
    torch.manual_seed(args.seed)
    return PerformerModel(model_config_from_args(args)), "random initialization"


def run(args: argparse.Namespace) -> int:
    set_threads(args)
    encoder, source = _encoder(args)
    try:
        training = TrainingConfig(
            task="tokens",
            max_steps=args.steps,
            batch_size=args.batch_size,
            max_length=args.max_length,
            learning_rate=args.lr,
            weight_decay=0.01,
            warmup_steps=args.warmup,
            schedule=args.schedule,
            grad_clip=1.0,
            eval_every=args.eval_every,
            checkpoint_every=max(args.eval_every, args.steps // 4),
            seed=args.seed,
        )
    except ValueError as error:
        raise SystemExit(f"performers: error: fine-tuning options: {error}") from None
    result = finetune(
        encoder,
        training,
        out_dir=args.out,
        freeze_encoder=args.freeze,
        train_limit=args.train_limit,
        test_limit=args.test_limit,
    )
    print(f"secondary structure, encoder from {source}: test Q3 {100 * result['q3']:.2f}%")
    return 0
