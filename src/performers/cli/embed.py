"""``performers embed``: per-protein (or per-residue) embeddings of a trained model
(:func:`performers.experiments.embedding.embed_proteins`)."""

from __future__ import annotations

import argparse
import time

import torch

from performers.cli.options import device_from_args
from performers.experiments import load_trained
from performers.experiments.embedding import (
    DEFAULT_MAX_TOKENS,
    crop_proteins,
    embed_proteins,
    encoder_of,
    protein_pairs,
    write_embeddings,
)
from performers.proteins import FastaError, FastaRecord, read_fasta

HELP = "embeddings of every protein of a FASTA file (mean-pooled or per residue) -> .npz/.safetensors"
DESCRIPTION = f"""{HELP}.

Each protein is encoded as [<cls>, residues..., <eos>]; an embedding covers its residues only
(<cls>, <eos> and padding are excluded from the mean and from per-residue output). Layer 0 is
the embedding output, 1..num_layers the blocks' outputs; the default, the last layer, is taken
after the final LayerNorm (what the language-model head reads), the others are the
un-normalized residual stream. Output keys are the FASTA ids (the first word of each header).
Proteins are sorted by length and batched by a budget of padded tokens; nothing is cropped
unless --max-length is given. FAVOR+ keeps the cost of a protein linear in its length."""

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The options ``embed`` and ``score`` share: the model, its input and how it runs."""
    parser.add_argument(
        "model", help="a trained run directory (its final/) or a save_pretrained dir with tokenizer.json"
    )
    parser.add_argument("input", help="FASTA file (plain or gzip); ids are the first word of each header")
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        help="padded tokens per forward pass (sequences sorted by length; a longer protein runs alone)",
    )
    parser.add_argument(
        "--attention",
        choices=["favor", "exact"],
        default=None,
        help="run the model's FAVOR+ or exact-softmax twin (same weights; default: as trained)",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="float32", help="parameter and compute dtype"
    )


def add_max_length(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="crop each protein to this many tokens including <cls> and <eos> (keeps its first N-2 "
        "residues); default: no cropping (a model with learned positions then refuses longer proteins)",
    )


def load_model(args: argparse.Namespace, command: str):
    """``(model, tokenizer)`` on the chosen device and dtype; errors end the command naming it."""
    try:
        model, tokenizer = load_trained(args.model, attention=args.attention)
    except (OSError, ValueError) as error:
        raise SystemExit(f"performers {command}: cannot load the model: {error}") from None
    return model.to(device=device_from_args(args, command), dtype=DTYPES[args.dtype]), tokenizer


def read_records(path: str, command: str, option: str = "input") -> list[FastaRecord]:
    """Every record of a FASTA file; a malformed or empty file ends the command naming it."""
    try:
        records = list(read_fasta(path))
    except (OSError, FastaError) as error:
        raise SystemExit(f"performers {command}: {option} {error}") from None
    if not records:
        raise SystemExit(f"performers {command}: {option} {path}: no FASTA records")
    return records


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "embed", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_options(parser)
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
    add_max_length(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    if not args.out.lower().endswith((".npz", ".safetensors")):
        raise SystemExit(f"performers embed: --out {args.out}: must end in .npz or .safetensors")
    records = read_records(args.input, "embed")
    model, tokenizer = load_model(args, "embed")
    num_layers = model.config.num_layers
    layer = num_layers if args.layer is None else args.layer
    try:
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
    except ValueError as error:
        raise SystemExit(f"performers embed: {error}") from None
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
