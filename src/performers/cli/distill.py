"""``performers distill``: distil a Hugging Face model into its FAVOR version
(:func:`performers.jobs.distillation.distill_model`; the ``[hf]`` extra).

``--out`` belongs to the run (locked until the student is saved); ``--resume`` refuses options
that would continue another computation (teacher weights and texts or proteins included), naming
each. ``--fasta`` distils a protein model (ESM, ProtBert) on the user's proteins."""

from __future__ import annotations

import argparse

from performers.cli.common import add_hidden_alias, user_errors_named
from performers.cli.favor_options import FAVOR_FIELDS, add_favor_options, favor_config_from_args
from performers.cli.options import (
    add_checkpoint_option,
    add_compute_options,
    add_overwrite_option,
    add_resume_option,
    check_output_dir,
    check_resume_overwrite,
    compute_device,
    refusals_as_errors,
    run_fields,
)

HELP = "distil a Hugging Face model into its FAVOR+ version (hidden states, logits, task loss)"

# DistillConfig field -> dest of the option that sets it.
DISTILL_FIELDS: dict[str, str] = {
    "steps": "steps",
    "batch_size": "batch_size",
    "learning_rate": "lr",
    "warmup_steps": "warmup",
    "max_length": "max_length",
    "hidden_weight": "hidden_weight",
    "logit_weight": "logit_weight",
    "task_weight": "task_weight",
    "temperature": "temperature",
    "seed": "seed",
    "checkpoint_every": "checkpoint_every",
}


def option_of(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The option of each key of a distillation's run description, for messages; derived from
    ``parser``."""
    return run_fields(
        parser,
        {"distill.": DISTILL_FIELDS, "model.config.favor_config.": FAVOR_FIELDS},
        {
            "distill.data_identity.teacher_sha256": "teacher weights (MODEL)",
            "distill.data_identity.texts_sha256": "training texts (--texts)",
            "distill.data_identity.proteins_sha256": "training proteins (--fasta)",
        },
    )


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("distill", help=HELP, description=HELP)
    p.add_argument("model", help="the original (softmax) model: a save_pretrained directory")
    p.add_argument("--out", default="runs/distill", help="checkpoints/ and final/ (the student) go here")
    data = p.add_mutually_exclusive_group()
    data.add_argument(
        "--texts",
        default=None,
        help="training texts, one per line (.txt or .txt.gz); default: the STS-B training sentences",
    )
    data.add_argument(
        "--fasta",
        default=None,
        help="train on these proteins instead (FASTA, plain or .gz), for a protein model (ESM, ProtBert): "
        "tokenized by the model's own tokenizer, random crops of --max-length tokens",
    )
    p.add_argument("--steps", type=int, default=200, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=32, help="texts (or proteins) per step")
    p.add_argument("--lr", type=float, default=1e-4, help="peak AdamW learning rate")
    add_hidden_alias(
        p, "--warmup-steps", p.add_argument("--warmup", type=int, default=20, help="linear warm-up steps")
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=128,
        help="truncate texts (crop proteins) to this many tokens, special tokens included",
    )
    p.add_argument(
        "--hidden-weight",
        type=float,
        default=1.0,
        help="weight of the hidden-state MSE, every layer",
    )
    p.add_argument(
        "--logit-weight", type=float, default=1.0, help="weight of the logit KL when the model has logits"
    )
    p.add_argument(
        "--task-weight",
        type=float,
        default=1.0,
        help="weight of the model's own loss (causal LM: next token)",
    )
    p.add_argument("--temperature", type=float, default=2.0, help="softmax temperature of the logit KL")
    add_checkpoint_option(p, default=100)
    add_resume_option(p, may_change="--steps, --checkpoint-every, --threads")
    add_overwrite_option(p)
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="data-order seed (and the projection seed unless --projection-seed is given)",
    )
    add_compute_options(p)
    add_favor_options(p)
    return p


def run(args: argparse.Namespace) -> int:
    check_resume_overwrite(args)
    check_output_dir(args.out)
    device = compute_device(args)
    from performers.integrations.distill import DistillConfig
    from performers.jobs.distillation import distill_model

    favor = favor_config_from_args(args)
    names = option_of(args.command_parser)
    with user_errors_named({k.removeprefix("distill."): v for k, v in names.items()}, "distill options"):
        config = DistillConfig(**{field: getattr(args, dest) for field, dest in DISTILL_FIELDS.items()})
    with refusals_as_errors(names):
        result, final = distill_model(
            args.model,
            config,
            favor,
            out_dir=args.out,
            texts=args.texts,
            fasta=args.fasta,
            resume=args.resume,
            overwrite=args.overwrite,
            device=device,
        )
    print(
        f"distilled {result['steps']} steps in {result['seconds']:.0f} s (loss {result['loss']:.4g}); "
        f"student saved to {final}"
    )
    return 0
