"""``performers evaluate``: accuracy and perplexity of a trained model on the shipped corpus, a
FASTA file or a prepared dataset, in aggregate and per protein
(:func:`performers.jobs.protein_evaluation.evaluation_proteins`,
:func:`performers.jobs.evaluate_model`, :func:`~performers.jobs.evaluate_per_sequence`)."""

from __future__ import annotations

import argparse

from performers.cli.common import UsageError
from performers.cli.options import (
    MODEL_HELP,
    add_compute_options,
    check_output_file,
    compute_device,
    model_source,
)
from performers.jobs import evaluate_model, evaluate_per_sequence, load_trained, write_csv
from performers.jobs.hf_protein_lm import evaluate_protein_lm, protein_lm_from_directory
from performers.jobs.protein_evaluation import evaluation_proteins, protein_ids
from performers.models import PerformerForCausalLM

HELP = "accuracy and perplexity of a trained model (shipped corpus, a FASTA file or a prepared dataset)"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("evaluate", help=HELP, description=HELP)
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument(
        "--data",
        default=None,
        help="a FASTA file (every record) or a prepared dataset directory (its --split); "
        "default: the shipped corpus",
    )
    parser.add_argument(
        "--split", choices=["train", "valid", "test"], default="test", help="split of the corpus or dataset"
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per protein (crop at start); default the model's own maximum (max_position_embeddings)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="proteins per forward pass")
    parser.add_argument("--limit", type=int, default=None, help="first N proteins")
    parser.add_argument(
        "--attention",
        choices=["favor", "exact"],
        default=None,
        help="run the model's FAVOR+ or exact-softmax twin (same weights; default: as trained)",
    )
    parser.add_argument(
        "--per-sequence",
        default=None,
        metavar="CSV",
        help="also write one row per protein: id, length, tokens, loss, perplexity, accuracy",
    )
    add_compute_options(parser)
    return parser


def max_length_of(model, requested: int | None) -> int:
    """Tokens per protein: ``requested``, or the model's own maximum when None. A model with
    learned positions cannot read more than ``max_position_embeddings`` tokens: asking for more
    is a UsageError naming both numbers (not an index error in the middle of evaluation)."""
    config = model.config
    limit = config.max_position_embeddings
    if requested is None:
        return limit
    if requested < 3:
        raise UsageError(f"--max-length must be >= 3 (<cls>, a residue, <eos>), got {requested}")
    if config.position == "learned" and requested > limit:
        raise UsageError(
            f"--max-length {requested} exceeds the model's maximum length {limit} "
            "(max_position_embeddings of its learned positions); omit --max-length to use it"
        )
    return requested


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 0:
        raise UsageError(f"--limit must be >= 0, got {args.limit}")
    check_output_file(args.per_sequence, "--per-sequence")
    device = compute_device(args)
    if model_source(args.model) == "huggingface":
        return _run_huggingface(args, device)
    model, tokenizer = load_trained(args.model, attention=args.attention)
    model.to(device)  # the batches follow it
    task = "clm" if isinstance(model, PerformerForCausalLM) else "mlm"
    max_length = max_length_of(model, args.max_length)
    sequences, what = evaluation_proteins(args.data, args.split, args.limit)
    if len(sequences) == 0:
        raise UsageError(f"{what}: no protein to evaluate")
    options = {"task": task, "max_length": max_length, "batch_size": args.batch_size}
    result = evaluate_model(model, tokenizer, sequences, **options)
    scored = "masked positions" if task == "mlm" else "next tokens"
    print(
        f"{what}: accuracy {100 * result['accuracy']:.2f}%, perplexity {result['perplexity']:.2f} "
        f"over {result['tokens']} {scored} of {len(sequences)} proteins"
    )
    if args.per_sequence:
        ids = protein_ids(args.data, args.split, len(sequences))
        path = write_csv(
            evaluate_per_sequence(model, tokenizer, sequences, ids, **options), args.per_sequence
        )
        print(f"wrote {path} ({len(sequences)} proteins)")
    return 0


def _run_huggingface(args: argparse.Namespace, device) -> int:
    """A Hugging Face protein model: :func:`~performers.jobs.hf_protein_lm.evaluate_protein_lm`
    on residue strings (15% of each protein's residues masked for ESM / ProtBert, every next
    token for ProtGPT2)."""
    try:
        lm = protein_lm_from_directory(args.model, attention=args.attention, device=device)
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot load the model: {error}") from None
    sequences, what = evaluation_proteins(args.data, args.split, args.limit)
    if len(sequences) == 0:
        raise UsageError(f"{what}: no protein to evaluate")
    if not all(isinstance(sequence, str) for sequence in sequences):
        raise UsageError(
            f"--data {args.data}: a Hugging Face model reads residue strings; give a FASTA file "
            "(or the shipped corpus), not a prepared dataset"
        )
    if args.max_length is not None and args.max_length < 3:
        raise UsageError(f"--max-length must be >= 3 (<cls>, a residue, <eos>), got {args.max_length}")
    limit = None if lm.residue_limit is None else lm.residue_limit + 2
    if args.max_length is not None and limit is not None and args.max_length > limit:
        raise UsageError(
            f"--max-length {args.max_length} exceeds the model's maximum length {limit} (its learned "
            "positions); omit --max-length to use it"
        )
    max_length = args.max_length or limit
    ids = protein_ids(args.data, args.split, len(sequences)) if args.per_sequence else None
    result, rows = evaluate_protein_lm(
        lm, list(sequences), ids, max_length=max_length, batch_size=args.batch_size
    )
    scored = "next tokens" if lm.is_causal else "masked positions"
    print(
        f"{what}: accuracy {100 * result['accuracy']:.2f}%, perplexity {result['perplexity']:.2f} "
        f"over {result['tokens']} {scored} of {len(sequences)} proteins"
    )
    if args.per_sequence:
        path = write_csv(rows, args.per_sequence)
        print(f"wrote {path} ({len(sequences)} proteins)")
    return 0
