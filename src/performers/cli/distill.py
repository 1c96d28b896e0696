"""``performers distill``: distil a Hugging Face model into its FAVOR version
(:func:`performers.integrations.distill.distill`; the ``[hf]`` extra).

``--out`` belongs to the run (locked until the student is saved); ``--resume`` refuses options
that would continue another computation (teacher weights and texts included), naming each."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

from performers.cli.favor_options import FAVOR_OPTIONS, add_favor_options, favor_config_from_args
from performers.cli.options import add_overwrite_option, set_threads
from performers.cli.train import refusals_as_errors
from performers.training import owned
from performers.utils import sha256

HELP = "distil a Hugging Face model into its FAVOR+ version (hidden states, logits, task loss)"

# The option of each key of a run description (performers.training.run_config), for messages.
OPTION_OF: dict[str, str] = {
    "distill.steps": "--steps",
    "distill.batch_size": "--batch-size",
    "distill.learning_rate": "--lr",
    "distill.warmup_steps": "--warmup-steps",
    "distill.max_length": "--max-length",
    "distill.hidden_weight": "--hidden-weight",
    "distill.logit_weight": "--logit-weight",
    "distill.task_weight": "--task-weight",
    "distill.temperature": "--temperature",
    "distill.seed": "--seed",
    "distill.checkpoint_every": "--checkpoint-every",
    "distill.data_identity.teacher_sha256": "teacher weights (MODEL)",
    "distill.data_identity.texts_sha256": "training texts (--texts)",
    **{
        f"model.config.favor_config.{name}": "--projection-seed"
        if name == "seed"
        else f"--{name.replace('_', '-')}"
        for name in FAVOR_OPTIONS
    },
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("distill", help=HELP, description=HELP)
    p.add_argument("model", help="the original (softmax) model: a save_pretrained directory")
    p.add_argument("--out", default="runs/distill", help="checkpoints/ and final/ (the student) go here")
    p.add_argument(
        "--texts",
        default=None,
        help="training texts, one per line (.txt or .txt.gz); default: the STS-B training sentences",
    )
    p.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    p.add_argument("--batch-size", type=int, default=32, help="texts per step (default 32)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak AdamW learning rate (default 1e-4)")
    p.add_argument("--warmup-steps", type=int, default=20, help="linear warm-up steps (default 20)")
    p.add_argument("--max-length", type=int, default=128, help="truncate texts to this many tokens")
    p.add_argument(
        "--hidden-weight",
        type=float,
        default=1.0,
        help="weight of the hidden-state MSE, every layer (default 1)",
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
    p.add_argument("--checkpoint-every", type=int, default=100, help="checkpoint period in steps")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in --out (refused if an option that changes the "
        "computation differs; --steps, --checkpoint-every, --threads may change)",
    )
    add_overwrite_option(p)
    p.add_argument("--seed", type=int, default=0, help="data-order seed (and projection seed by default)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    add_favor_options(p)
    return p


def data_identity(model: str | Path, texts: list[str]) -> dict[str, Any]:
    """What the distillation learns from: the SHA-256 of the teacher's weight files (by name)
    and of the training texts (in order)."""
    directory = Path(model)
    weights = sorted(p for p in directory.glob("*") if p.suffix in (".safetensors", ".bin"))
    teacher = {p.name: sha256(p) for p in weights} if directory.is_dir() else str(model)
    return {
        "teacher_sha256": hashlib.sha256(json.dumps(teacher, sort_keys=True).encode()).hexdigest(),
        "texts_sha256": hashlib.sha256(json.dumps(texts).encode()).hexdigest(),
    }


def run(args: argparse.Namespace) -> int:
    from performers.integrations.distill import (
        DistillConfig,
        TextBatches,
        distill,
        make_student,
        read_texts,
        with_lm_labels,
    )
    from performers.integrations.transformers import load_hf_model
    from performers.text import load_stsb

    if args.resume and args.overwrite:
        raise SystemExit("performers: error: give --resume (continue the run) or --overwrite, not both")
    set_threads(args)
    favor = favor_config_from_args(args)
    try:
        teacher, tokenizer = load_hf_model(args.model)
        texts = read_texts(args.texts) if args.texts else None
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"performers distill: {error}") from None
    if getattr(teacher.config, "favor_config", None) is not None:
        raise SystemExit(f"{args.model}: already a FAVOR+ model; distil from the original softmax model")
    if tokenizer is None:
        raise SystemExit(f"{args.model}: no tokenizer saved with the model")
    if texts is None:
        first, second, _ = load_stsb("train")
        texts = sorted(set(first + second))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = DistillConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=args.warmup_steps,
        hidden_weight=args.hidden_weight,
        logit_weight=args.logit_weight,
        task_weight=args.task_weight,
        temperature=args.temperature,
        max_length=args.max_length,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        data_identity=data_identity(args.model, texts),
    )
    student = make_student(teacher, favor)
    causal_lm = student.config.model_type in ("gpt2", "llama") and hasattr(student, "lm_head")
    batches = TextBatches(texts, tokenizer, config.batch_size, config.max_length, seed=config.seed)
    if causal_lm and config.task_weight:
        batches = with_lm_labels(batches)
    final = Path(args.out) / "final"
    with refusals_as_errors(OPTION_OF), owned(args.out):  # owned until the student is saved
        result = distill(
            teacher, student, batches, config, out_dir=args.out, resume=args.resume, overwrite=args.overwrite
        )
        student.save_pretrained(final)
        tokenizer.save_pretrained(final)
    print(
        f"distilled {result['steps']} steps in {result['seconds']:.0f} s (loss {result['loss']:.4g}); "
        f"student saved to {final}"
    )
    return 0
