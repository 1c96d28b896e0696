"""``performers generate``: continue protein prompts with a trained causal LM
(:func:`performers.generate`, constant cost per token with FAVOR+)."""

from __future__ import annotations

import argparse

import torch

from performers.experiments import load_trained
from performers.models import PerformerForCausalLM

HELP = "continue protein prompts with a trained causal LM"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("generate", help=HELP, description=HELP)
    parser.add_argument("model", help="directory of a trained PerformerForCausalLM")
    parser.add_argument("prompts", nargs="+", help="residue strings, e.g. MKV")
    parser.add_argument("--max-new-tokens", type=int, default=50, help="residues to add per prompt")
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling probability mass")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    return parser


def run(args: argparse.Namespace) -> int:
    model, tokenizer = load_trained(args.model)
    if not isinstance(model, PerformerForCausalLM):
        raise SystemExit(f"{args.model}: generation needs a causal LM (train with --task clm)")
    ids, mask = tokenizer.batch_encode(args.prompts, padding_side="left")
    ids, mask = ids[:, :-1], mask[:, :-1]  # drop <eos>: the model continues the prompt
    tokens = model.generate(
        ids,
        max_new_tokens=args.max_new_tokens,
        attention_mask=mask,
        do_sample=args.sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.pad_id,
        generator=torch.Generator().manual_seed(args.seed),
    )
    for row in tokens:
        print(tokenizer.decode(row))
    return 0
