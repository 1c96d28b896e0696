"""``performers convert``, ``performers distill`` and ``performers bench compat`` (the ``[hf]`` extra).

Registered into the CLI by :func:`add_commands`; transformers is imported only when one of
these commands runs.
"""

from __future__ import annotations

import argparse
import gzip
import os
from pathlib import Path
from typing import Any

__all__ = ["add_commands", "load_hf_model", "read_texts"]


def _add_favor_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-features", type=int, default=256, help="M, random features per layer (default 256)")
    p.add_argument(
        "--kernel",
        default="softmax",
        help="FAVOR kernel, a registry name: softmax, relu, elu, ... (default softmax)",
    )
    p.add_argument(
        "--projection-kind",
        choices=["orthogonal", "iid"],
        default="orthogonal",
        help="random projection: block-orthogonal (FAVOR+, default) or iid Gaussian",
    )
    p.add_argument(
        "--row-norms", choices=["chi", "sqrt_d"], default="chi", help="orthogonal row norms (default chi)"
    )
    p.add_argument("--seed", type=int, default=0, help="projection seed: layer l uses (seed, l, draw)")
    p.add_argument(
        "--redraw-every", type=int, default=0, help="redraw period for FeatureRedrawer (0 = never, default)"
    )
    p.add_argument("--chunk-size", type=int, default=64, help="positions per chunk of the causal algorithm")


def _favor_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "num_features": args.num_features,
        "kernel": args.kernel,
        "projection_kind": args.projection_kind,
        "row_norms": args.row_norms,
        "seed": args.seed,
        "redraw_every": args.redraw_every,
        "chunk_size": args.chunk_size,
    }


def load_hf_model(path: str | os.PathLike):
    """``(model, tokenizer or None)`` from a ``save_pretrained`` directory, offline, eval mode.

    The class is the one named in ``config.architectures`` (e.g. ``BertModel``,
    ``GPT2LMHeadModel``), so heads are kept; ``AutoModel`` when none is named.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = str(path)
    if not Path(path, "config.json").is_file():
        raise SystemExit(f"{path}: not a Hugging Face model directory (no config.json)")
    config = AutoConfig.from_pretrained(path)
    names = getattr(config, "architectures", None) or []
    cls = getattr(transformers, names[0], None) if names else None
    model = (cls or AutoModel).from_pretrained(path).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        tokenizer = None
    return model, tokenizer


def read_texts(path: str | os.PathLike) -> list[str]:
    """Non-empty lines of a text file (plain or ``.gz``), one text per line."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        texts = [line.strip() for line in handle if line.strip()]
    if not texts:
        raise SystemExit(f"{path}: no texts")
    return texts


def _convert(args: argparse.Namespace) -> int:
    from performers.integrations.transformers import performerize

    model, tokenizer = load_hf_model(args.model)
    performerize(model, **_favor_options(args))
    model.save_pretrained(args.out)
    if tokenizer is not None:
        tokenizer.save_pretrained(args.out)
    settings = model.config.favor_config
    print(
        f"wrote {args.out}: {type(model).__name__} with FAVOR+ attention (kernel {settings['kernel']}, "
        f"M = {settings['num_features']}); load it with "
        "AutoModel.from_pretrained(path, attn_implementation='favor') after importing "
        "performers.integrations.transformers"
    )
    return 0


def _distill(args: argparse.Namespace) -> int:
    import torch

    from performers.integrations.distill import DistillConfig, TextBatches, distill, make_student

    if args.threads:
        torch.set_num_threads(args.threads)
    teacher, tokenizer = load_hf_model(args.model)
    if getattr(teacher.config, "favor_config", None) is not None:
        raise SystemExit(f"{args.model}: already a FAVOR+ model; distil from the original softmax model")
    if tokenizer is None:
        raise SystemExit(f"{args.model}: no tokenizer saved with the model")
    if args.texts:
        texts = read_texts(args.texts)
    else:
        from performers.bench.compat import load_stsb

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
    student = make_student(teacher, **_favor_options(args))
    causal_lm = student.config.model_type in ("gpt2", "llama") and hasattr(student, "lm_head")
    batches = TextBatches(texts, tokenizer, config.batch_size, config.max_length, seed=config.seed)
    if causal_lm and config.task_weight:
        batches = _with_lm_labels(batches)
    result = distill(teacher, student, batches, config, out_dir=args.out, resume=args.resume)
    final = Path(args.out) / "final"
    student.save_pretrained(final)
    tokenizer.save_pretrained(final)
    print(
        f"distilled {result['steps']} steps in {result['seconds']:.0f} s (loss {result['loss']:.4g}); "
        f"student saved to {final}"
    )
    return 0


def _with_lm_labels(batches):
    """Add next-token labels (the inputs, -100 at padding) for a causal LM's own loss."""

    def make(index: int):
        batch = batches(index)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return {**batch, "labels": labels}

    return make


def _compat(args: argparse.Namespace) -> int:
    from performers.bench.compat import main

    return main(args)


def add_commands(sub: Any, bench_sub: Any) -> None:
    """Add ``convert`` and ``distill`` to ``sub`` and ``compat`` to ``bench_sub`` (argparse)."""
    convert = sub.add_parser(
        "convert", help="switch a Hugging Face model directory to FAVOR+ attention and save it"
    )
    convert.add_argument("model", help="a save_pretrained directory (BERT, RoBERTa, GPT-2 or Llama)")
    convert.add_argument("out", help="output directory (config.json with favor_config, weights, tokenizer)")
    _add_favor_options(convert)
    convert.set_defaults(func=_convert)

    distill = sub.add_parser(
        "distill",
        help="distil a Hugging Face model into its FAVOR+ version (hidden states, logits, task loss)",
    )
    distill.add_argument("model", help="the original (softmax) model: a save_pretrained directory")
    distill.add_argument(
        "--out", default="runs/distill", help="checkpoints/ and final/ (the student) go here"
    )
    distill.add_argument(
        "--texts",
        default=None,
        help="training texts, one per line (.txt or .txt.gz); default: the STS-B training sentences",
    )
    distill.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    distill.add_argument("--batch-size", type=int, default=32, help="texts per step (default 32)")
    distill.add_argument("--lr", type=float, default=1e-4, help="peak AdamW learning rate (default 1e-4)")
    distill.add_argument("--warmup-steps", type=int, default=20, help="linear warm-up steps (default 20)")
    distill.add_argument("--max-length", type=int, default=128, help="truncate texts to this many tokens")
    distill.add_argument(
        "--hidden-weight",
        type=float,
        default=1.0,
        help="weight of the hidden-state MSE, every layer (default 1)",
    )
    distill.add_argument(
        "--logit-weight", type=float, default=1.0, help="weight of the logit KL when the model has logits"
    )
    distill.add_argument(
        "--task-weight",
        type=float,
        default=1.0,
        help="weight of the model's own loss (causal LM: next token)",
    )
    distill.add_argument("--temperature", type=float, default=2.0, help="softmax temperature of the logit KL")
    distill.add_argument("--checkpoint-every", type=int, default=100, help="checkpoint period in steps")
    distill.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    distill.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    _add_favor_options(distill)
    distill.set_defaults(func=_distill)

    from performers.bench.compat import add_arguments

    compat = bench_sub.add_parser(
        "compat",
        help="all-MiniLM-L6-v2 with FAVOR+: embedding cosine and STS-B Spearman before/after distillation",
    )
    add_arguments(compat)
    compat.set_defaults(func=_compat)
