"""``performers predict``: a fine-tuned model (``performers finetune``'s run directory or its
``final/``) on the proteins of a FASTA file → CSV (:func:`performers.jobs.predict_proteins`)."""

from __future__ import annotations

import argparse
import time

from performers.cli.common import RawHelpFormatter, UsageError, option_names, user_errors_named
from performers.cli.options import add_compute_options, check_output_file, compute_device, read_records
from performers.jobs.embedding import DEFAULT_MAX_TOKENS
from performers.jobs.prediction import PER_RESIDUE_FORMATS, predict_proteins, write_predictions
from performers.jobs.protein_models import load_protein_model, protein_model_source

HELP = (
    "run a fine-tuned model on a FASTA file: per-residue classes with probabilities, or a value per protein"
)
DESCRIPTION = f"""{HELP}.

MODEL is a run directory of performers finetune (its final/) or final/ itself. Each protein is
read whole ([<cls>, residues..., <eos>]) unless --max-length crops it or the model's learned
positions cannot go longer (then the proteins cropped are counted, and predicted_length says
how many residues each row covers); proteins are sorted by length and batched by a budget of
padded tokens.

CSV columns:
  per-residue classes, --per-residue string (default): id, length, predicted_length, labels
      (the predicted class of each residue, e.g. CCHHHHEE), confidence (mean top probability)
  per-residue classes, --per-residue rows: id, position (1-based), residue, label, and p_CLASS
      for each class (they sum to 1)
  a sequence-level target (regression): id, length, predicted_length, prediction"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "predict", help=HELP, description=DESCRIPTION, formatter_class=RawHelpFormatter
    )
    parser.add_argument("model", help="a performers finetune run directory or its final/")
    parser.add_argument("input", help="FASTA file (plain or gzip); ids are the first word of each header")
    parser.add_argument("--out", required=True, help="output CSV file")
    parser.add_argument(
        "--per-residue",
        choices=PER_RESIDUE_FORMATS,
        default="string",
        help="per-residue models: one row per protein with its label string, or one row per residue "
        "with every class's probability (default: string)",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="crop each protein to this many tokens including <cls> and <eos> (its first N-2 residues); "
        "default: whole proteins",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        help=f"padded tokens per forward pass (a longer protein runs alone) (default: {DEFAULT_MAX_TOKENS})",
    )
    add_compute_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    check_output_file(args.out)
    if args.max_length is not None and args.max_length < 3:
        raise UsageError(f"--max-length must be >= 3 (<cls>, one residue, <eos>), got {args.max_length}")
    if args.max_tokens < 1:
        raise UsageError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    device = compute_device(args)
    source = protein_model_source(args.model)  # from config.json: refused before any weight loads
    if source != "finetuned":
        raise UsageError(
            f"{args.model}: a {source} model, not a fine-tuned one; predict runs what performers finetune "
            "wrote (its run directory or final/)"
        )
    records = read_records(args.input)
    loaded = load_protein_model(args.model)
    start = time.perf_counter()
    with user_errors_named(option_names(args.command_parser)):  # a protein or option the model refuses
        predictions = predict_proteins(
            loaded, records, max_tokens=args.max_tokens, max_length=args.max_length, device=device
        )
    seconds = time.perf_counter() - start
    write_predictions(predictions, args.out, per_residue=args.per_residue)
    if predictions.cropped:
        print(f"cropped {predictions.cropped} protein(s) to their first {predictions.keep} residues")
    residues = sum(p.predicted_length for p in predictions.proteins)
    what = "values" if predictions.task == "regression" else f"classes ({'/'.join(predictions.classes)})"
    print(
        f"wrote {len(predictions)} proteins' predicted {what} to {args.out} "
        f"({residues} residues in {seconds:.3f} s, {residues / max(seconds, 1e-9):.0f} residues/s)"
    )
    return 0
