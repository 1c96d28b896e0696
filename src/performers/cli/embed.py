"""``performers embed``: per-protein (or per-residue) embeddings of a trained model
(:func:`performers.jobs.embedding.embed_proteins`)."""

from __future__ import annotations

import argparse
import time

from performers.cli.common import RawHelpFormatter, UsageError, option_names, user_errors_named
from performers.cli.options import (
    add_crop_option,
    add_protein_model_options,
    check_output_file,
    load_model,
    read_records,
)
from performers.jobs.embedding import (
    crop_proteins,
    embed_proteins,
    encoder_of,
    protein_pairs,
    write_embeddings,
)

HELP = "embeddings of every protein of a FASTA file (mean-pooled or per residue) -> .npz/.safetensors"
DESCRIPTION = f"""{HELP}.

Each protein is encoded as [<cls>, residues..., <eos>]; an embedding covers its residues only
(<cls>, <eos> and padding are excluded from the mean and from per-residue output). Layer 0 is
the embedding output, 1..num_layers the blocks' outputs; the default, the last layer, is taken
after the final LayerNorm (what the language-model head reads), the others are the
un-normalized residual stream. Output keys are the FASTA ids (the first word of each header).
Proteins are sorted by length and batched by a budget of padded tokens; nothing is cropped
unless --max-length is given. FAVOR+ keeps the cost of a protein linear in its length."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "embed", help=HELP, description=DESCRIPTION, formatter_class=RawHelpFormatter
    )
    add_protein_model_options(parser)
    parser.add_argument("--out", required=True, help="output file: .npz or .safetensors, keyed by FASTA id")
    parser.add_argument(
        "--per-residue",
        action="store_true",
        help="write (L, d_model) per protein, one row per residue, instead of the mean over residues",
    )
    parser.add_argument(
        "--layer",
        type=int,
        default=None,
        help="0 = embeddings, 1..num_layers = block outputs (default: the last, after the final LayerNorm)",
    )
    add_crop_option(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    if not args.out.lower().endswith((".npz", ".safetensors")):
        raise UsageError(f"--out {args.out}: must end in .npz or .safetensors")
    check_output_file(args.out)
    records = read_records(args.input)
    model, tokenizer = load_model(args)
    num_layers = model.config.num_layers
    layer = num_layers if args.layer is None else args.layer
    with user_errors_named(option_names(args.command_parser)):  # a protein or option the model refuses
        pairs, cropped = crop_proteins(protein_pairs(records), encoder_of(model)[0], args.max_length)
        start = time.perf_counter()
        embeddings = embed_proteins(
            model,
            tokenizer,
            pairs,
            per_residue=args.per_residue,
            layer=layer,
            max_tokens=args.max_tokens,
        )
        seconds = time.perf_counter() - start
        metadata = {
            "pooling": "none" if args.per_residue else "mean",
            "layer": str(layer),
            "num_layers": str(num_layers),
            "model": str(args.model),
            "max_length": str(args.max_length),
        }
        write_embeddings(embeddings, args.out, metadata=metadata)
    residues = sum(len(sequence) for _, sequence in pairs)
    width = model.config.d_model
    if args.per_residue:
        lengths = [len(sequence) for _, sequence in pairs]
        shape = f"(L, {width}) per protein, L {min(lengths)}..{max(lengths)}"
    else:
        shape = f"({width},) per protein, mean over residues"
    where = (
        "after the final LayerNorm"
        if layer == num_layers
        else ("embeddings" if layer == 0 else "block output")
    )
    if cropped:
        print(f"cropped {cropped} protein(s) to their first {args.max_length - 2} residues (--max-length)")
    print(
        f"wrote {len(embeddings)} embeddings to {args.out}: {shape}, layer {layer}/{num_layers} ({where}), "
        f"{args.dtype}; {residues} residues in {seconds:.3f} s ({len(pairs) / seconds:.1f} proteins/s, "
        f"{residues / seconds:.0f} residues/s)"
    )
    return 0
