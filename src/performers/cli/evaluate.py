"""``performers evaluate``: accuracy and perplexity of a trained model on a corpus split
(:func:`performers.experiments.evaluate_model`)."""

from __future__ import annotations

import argparse

from performers.experiments import evaluate_model, load_trained
from performers.models import PerformerForCausalLM
from performers.proteins import default_corpus, read_split

HELP = "accuracy and perplexity of a trained model on a split"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("evaluate", help=HELP, description=HELP)
    parser.add_argument("model", help="directory written by training (its final/ or a save_pretrained dir)")
    parser.add_argument("--split", choices=["train", "valid", "test"], default="test", help="corpus split")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per protein (crop at start)")
    parser.add_argument("--batch-size", type=int, default=16, help="proteins per forward pass")
    parser.add_argument("--limit", type=int, default=None, help="first N proteins of the split")
    parser.add_argument("--attention", choices=["favor", "exact"], default=None, help="override the backend")
    return parser


def run(args: argparse.Namespace) -> int:
    model, tokenizer = load_trained(args.model, attention=args.attention)
    task = "clm" if isinstance(model, PerformerForCausalLM) else "mlm"
    sequences = read_split(default_corpus(), args.split)[: args.limit]
    result = evaluate_model(
        model, tokenizer, sequences, task=task, max_length=args.max_length, batch_size=args.batch_size
    )
    print(
        f"{args.split}: accuracy {100 * result['accuracy']:.2f}%, perplexity {result['perplexity']:.2f} "
        f"over {result['tokens']} {'masked positions' if task == 'mlm' else 'next tokens'}"
    )
    return 0
