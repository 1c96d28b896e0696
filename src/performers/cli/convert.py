"""``performers convert``: switch a Hugging Face model directory to FAVOR attention and save it
(:func:`performers.integrations.transformers.performerize`; the ``[hf]`` extra).

The saved ``config.json`` holds ``favor_config`` and ``attn_implementation: "favor"``: reloading
it with ``from_pretrained`` runs FAVOR+ (after ``import performers.integrations.transformers``),
and without that import Hugging Face refuses the unknown attention instead of silently running
softmax."""

from __future__ import annotations

import argparse

from performers.cli.favor_options import add_favor_options, favor_config_from_args

HELP = "switch a Hugging Face model directory to FAVOR+ attention and save it"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("convert", help=HELP, description=HELP)
    parser.add_argument("model", help="a save_pretrained directory (BERT, RoBERTa, GPT-2 or Llama)")
    parser.add_argument("out", help="output directory (config.json with favor_config, weights, tokenizer)")
    add_favor_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from performers.integrations.transformers import load_hf_model, performerize

    favor = favor_config_from_args(args)
    try:
        model, tokenizer = load_hf_model(args.model)
    except FileNotFoundError as error:
        raise SystemExit(f"performers convert: {error}") from None
    performerize(model, favor)
    model.save_pretrained(args.out)
    if tokenizer is not None:
        tokenizer.save_pretrained(args.out)
    print(
        f"wrote {args.out}: {type(model).__name__} with FAVOR+ attention (kernel {favor.kernel}, "
        f"M = {favor.num_features}); load it with AutoModel.from_pretrained(path) after importing "
        "performers.integrations.transformers (it runs FAVOR+; attn_implementation='sdpa' runs softmax)"
    )
    return 0
