"""``performers distill``: distil a Hugging Face model into its FAVOR version
(:func:`performers.integrations.distill.distill`; the ``[hf]`` extra)."""

from __future__ import annotations

import argparse
from pathlib import Path

from performers.cli.favor_options import add_favor_options, favor_config_from_args
from performers.cli.options import set_threads

HELP = "distil a Hugging Face model into its FAVOR+ version (hidden states, logits, task loss)"


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
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--seed", type=int, default=0, help="data-order seed (and projection seed by default)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    add_favor_options(p)
    return p


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
    )
    student = make_student(teacher, favor)
    causal_lm = student.config.model_type in ("gpt2", "llama") and hasattr(student, "lm_head")
    batches = TextBatches(texts, tokenizer, config.batch_size, config.max_length, seed=config.seed)
    if causal_lm and config.task_weight:
        batches = with_lm_labels(batches)
    result = distill(teacher, student, batches, config, out_dir=args.out, resume=args.resume)
    final = Path(args.out) / "final"
    student.save_pretrained(final)
    tokenizer.save_pretrained(final)
    print(
        f"distilled {result['steps']} steps in {result['seconds']:.0f} s (loss {result['loss']:.4g}); "
        f"student saved to {final}"
    )
    return 0
