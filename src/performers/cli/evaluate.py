"""``performers evaluate``: accuracy and perplexity of a trained model on the shipped corpus, a
FASTA file or a prepared dataset, in aggregate and per protein, each beside the unigram
baseline of a training split (:func:`performers.jobs.protein_evaluation.evaluate_proteins`,
:func:`~performers.jobs.hf_protein_lm.evaluate_protein_lm` for a Hugging Face model,
:func:`~performers.jobs.protein_evaluation.unigram_metrics`). Proteins are cropped only by the
one rule of every command (:mod:`performers.jobs.cropping`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from performers.cli.common import UsageError, option_names, user_errors_named
from performers.cli.options import (
    MODEL_HELP,
    add_compute_options,
    add_crop_option,
    add_pack_option,
    check_output_file,
    compute_device,
    model_source,
)
from performers.jobs import load_trained, write_csv
from performers.jobs.hf_protein_lm import evaluate_protein_lm, protein_lm_from_directory
from performers.jobs.protein_evaluation import (
    evaluate_proteins,
    evaluation_proteins,
    protein_ids,
    training_unigram,
    unigram_metrics,
)
from performers.jobs.results_file import format_metric, read_results, write_results
from performers.models import PerformerForCausalLM

HELP = "accuracy and perplexity of a trained model (shipped corpus, a FASTA file or a prepared dataset)"
PACK_HELP = (
    "run each batch of --batch-size proteins packed end to end in one row (no padding computed; the "
    "same proteins and masks, so the same numbers up to float rounding), or padded (--no-pack); "
    "default: pack with a performers model, pad a Hugging Face one (--pack refuses it)"
)
RESULTS_HELP = (
    "write the metrics, each beside its unigram baseline, as JSON (the results.json schema); "
    "default: beside --per-sequence CSV as CSV-STEM.results.json, else not written"
)


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
    add_crop_option(parser)
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
        help="also write one row per protein: id, length, scored_length, tokens, loss, perplexity, "
        "accuracy (proteins with nothing to score are listed on the terminal, not written)",
    )
    parser.add_argument("--results", default=None, metavar="JSON", help=RESULTS_HELP)
    add_pack_option(parser, PACK_HELP)
    add_compute_options(parser)
    return parser


def results_path(args: argparse.Namespace) -> Path | None:
    """Where the results go: ``--results``, else beside ``--per-sequence``; refused when the file
    holds another command's results (``performers train``'s ``results.json`` is never replaced)."""
    if args.results is not None:
        path = Path(args.results)
    elif args.per_sequence is not None:
        path = Path(args.per_sequence).with_suffix(".results.json")
    else:
        return None
    check_output_file(str(path), "--results")
    if path.is_file():
        try:
            command = read_results(path).get("command")
        except (ValueError, AttributeError):
            command = "unknown"
        if command != "evaluate":
            raise UsageError(
                f"--results {path}: holds the results of another command ({command}); "
                "give another file with --results"
            )
    return path


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 0:
        raise UsageError(f"--limit must be >= 0, got {args.limit}")
    check_output_file(args.per_sequence, "--per-sequence")
    results = results_path(args)
    device = compute_device(args)
    huggingface = model_source(args.model) == "huggingface"
    if huggingface and args.pack:
        raise UsageError(
            "--pack: a Hugging Face model is evaluated on padded batches (only performers models take "
            "packed input); drop --pack"
        )
    if huggingface:
        try:
            lm = protein_lm_from_directory(args.model, attention=args.attention, device=device)
        except (OSError, ValueError) as error:
            raise UsageError(f"cannot load the model: {error}") from None
        causal = lm.is_causal
    else:
        model, tokenizer = load_trained(args.model, attention=args.attention)
        model.to(device)  # the batches follow it
        causal = isinstance(model, PerformerForCausalLM)
    sequences, what = evaluation_proteins(args.data, args.split, args.limit)
    if len(sequences) == 0:
        raise UsageError(f"{what}: no protein to evaluate")
    ids = protein_ids(args.data, args.split, len(sequences))
    options = {"max_length": args.max_length, "batch_size": args.batch_size}
    start = time.perf_counter()  # the evaluation alone: not loading, nor the unigram baseline
    with user_errors_named(option_names(args.command_parser)):  # e.g. a --max-length the model refuses
        if huggingface:
            if not all(isinstance(sequence, str) for sequence in sequences):
                raise UsageError(
                    f"--data {args.data}: a Hugging Face model reads residue strings; give a FASTA "
                    "file (or the shipped corpus), not a prepared dataset"
                )
            evaluation = evaluate_protein_lm(lm, list(sequences), ids, **options)
        else:
            evaluation = evaluate_proteins(model, tokenizer, sequences, ids, pack=args.pack, **options)
    seconds = time.perf_counter() - start
    unigram, name = training_unigram(args.model, args.data)
    metrics = unigram_metrics(evaluation, unigram, name)
    summary = evaluation.summary
    scored = "next tokens" if causal else "masked positions"
    print(
        f"{what}: {format_metric('accuracy', metrics['accuracy'], percent=True)}, "
        f"{format_metric('perplexity', metrics['perplexity'])} "
        f"over {summary['tokens']} {scored} of {len(sequences)} proteins in {seconds:.3f} s "
        f"({len(sequences) / seconds:.1f} proteins/s)"
    )
    for line in evaluation.crop.messages():  # the one cropping rule (docs/guides/proteins.md)
        print(line)
    if args.per_sequence:
        path = write_csv(evaluation.rows, args.per_sequence)
        print(f"wrote {path} ({len(evaluation.rows)} proteins)")
    if results is not None:
        write_results(
            results,
            command="evaluate",
            metrics=metrics,
            model=str(args.model),
            data=what,
            task="clm" if causal else "mlm",
            scored=scored,
            proteins=len(sequences),
            crop=evaluation.crop.to_dict(),
            max_length=args.max_length,
        )
        print(f"wrote {results}")
    return 0
