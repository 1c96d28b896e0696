"""Options shared by the protein commands (model sizes, the training run) and the one place
that turns them into a :class:`~performers.PerformerConfig` and a
:class:`~performers.training.TrainingConfig`."""

from __future__ import annotations

import argparse

import torch

from performers.cli.favor_options import add_favor_options, favor_config_from_args
from performers.experiments import DEMO_MODEL, protein_model_config
from performers.layers import FavorConfig
from performers.models import PerformerConfig
from performers.training import SCHEDULES, TrainingConfig

__all__ = [
    "add_model_options",
    "add_run_options",
    "add_training_options",
    "model_config_from_args",
    "set_threads",
    "training_config_from_args",
]


def add_model_options(parser: argparse.ArgumentParser, favor: FavorConfig | None = None) -> None:
    """Sizes of a protein Performer (defaults: the demo's small model) and the FAVOR options."""
    d = DEMO_MODEL
    group = parser.add_argument_group("model")
    group.add_argument("--d-model", type=int, default=d.d_model, help=f"model width (default {d.d_model})")
    group.add_argument(
        "--layers", type=int, default=d.num_layers, help=f"Transformer blocks (default {d.num_layers})"
    )
    group.add_argument(
        "--heads", type=int, default=d.num_heads, help=f"attention heads (default {d.num_heads})"
    )
    group.add_argument("--d-ff", type=int, default=d.d_ff, help=f"feed-forward width (default {d.d_ff})")
    group.add_argument(
        "--dropout", type=float, default=d.dropout, help=f"dropout probability (default {d.dropout})"
    )
    add_favor_options(parser, favor)


def model_config_from_args(args: argparse.Namespace, *, attention: str = "favor") -> PerformerConfig:
    """The :class:`PerformerConfig` of the model options, for proteins of ``--max-length`` tokens."""
    try:
        return protein_model_config(
            d_model=args.d_model,
            num_layers=args.layers,
            num_heads=args.heads,
            d_ff=args.d_ff,
            dropout=args.dropout,
            max_length=args.max_length,
            attention=attention,
            favor=favor_config_from_args(args),
        )
    except (TypeError, ValueError) as error:
        raise SystemExit(f"performers: error: model options: {error}") from None


def add_run_options(parser: argparse.ArgumentParser, *, out: str) -> None:
    """``--seed``, ``--threads``, ``--out`` and ``--config`` (a JSON file of option values)."""
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, data order, masks, projections")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", default=out, help=f"output directory (default {out})")
    parser.add_argument(
        "--config",
        default=None,
        help='JSON file of option values (keys as the long options, e.g. {"d_model": 256}); '
        "options given on the command line win",
    )


def add_training_options(
    parser: argparse.ArgumentParser,
    *,
    steps: int,
    out: str,
    favor: FavorConfig | None = None,
    model: bool = True,
) -> None:
    """Everything a protein training run takes: model and FAVOR options (unless ``model`` is
    False: the command loads its model), optimization, data and run options."""
    if model:
        add_model_options(parser, favor)
    group = parser.add_argument_group("training")
    group.add_argument(
        "--task", choices=["mlm", "clm"], default="mlm", help="masked (BID) or causal (UNI) LM"
    )
    group.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
    group.add_argument("--batch-size", type=int, default=16, help="sequences per optimizer step (global)")
    group.add_argument("--max-length", type=int, default=256, help="tokens per protein crop")
    group.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    group.add_argument("--warmup", type=int, default=20, help="linear warm-up steps before the decay")
    group.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="learning rate after warm-up")
    group.add_argument("--eval-every", type=int, default=25, help="validation every N steps")
    group.add_argument("--train-limit", type=int, default=None, help="use only the first N training proteins")
    group.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test proteins")
    group.add_argument("--bf16", action="store_true", help="bf16 autocast")
    group.add_argument(
        "--concatenate",
        action="store_true",
        help="train and evaluate on proteins joined into windows of exactly --max-length tokens",
    )
    add_run_options(parser, out=out)


def training_config_from_args(args: argparse.Namespace, **overrides) -> TrainingConfig:
    """The :class:`TrainingConfig` of the training options (``overrides`` win)."""
    values = dict(
        task=args.task,
        max_steps=args.steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        learning_rate=args.lr,
        warmup_steps=args.warmup,
        schedule=args.schedule,
        eval_every=args.eval_every,
        checkpoint_every=max(args.eval_every, args.steps // 4),
        bf16=args.bf16,
        seed=args.seed,
        concatenate=args.concatenate,
    )
    try:
        return TrainingConfig(**{**values, **overrides})
    except (TypeError, ValueError) as error:
        raise SystemExit(f"performers: error: training options: {error}") from None


def set_threads(args: argparse.Namespace) -> None:
    """Apply ``--threads`` (when given)."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
