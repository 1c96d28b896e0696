"""``performers embed``: representations of proteins from a trained model, in the conventions of
ESM's ``esm-extract`` (:func:`performers.jobs.embedding.extract_representations`)."""

from __future__ import annotations

import argparse
import time

from performers.cli.common import (
    RawHelpFormatter,
    UsageError,
    add_hidden_alias,
    option_names,
    user_errors_named,
)
from performers.cli.options import (
    add_crop_option,
    add_pack_option,
    add_protein_model_options,
    check_output_file,
    compute_device,
    load_model,
    read_records,
)
from performers.jobs.cropping import crop_to_rule
from performers.jobs.embedding import (
    INCLUDES,
    extract_representations,
    protein_pairs,
    resolve_layers,
    write_embeddings,
)
from performers.jobs.protein_lm import as_protein_lm

HELP = (
    "representations of every protein of a FASTA file (esm-extract's layers and kinds) -> .npz/.safetensors"
)
DESCRIPTION = f"""{HELP}.

As ESM's esm-extract: --repr-layers picks layers (0 = the embedding output, 1..num_layers the
blocks' outputs, negative indices count from the end: -1 is the last, taken after the final
LayerNorm — what the language-model head reads; the others are the un-normalized residual
stream), --include what to keep of each: mean (over the residues only, never <cls>, <eos> or
padding), per_tok (L x d_model, one row per residue) and bos (the <cls> vector). Each protein is
encoded as [<cls>, residues..., <eos>] (a ProtGPT2-style model: its byte-pair tokens between
two <|endoftext|>; mean is then over its tokens, and per_tok, which needs one token per residue,
is refused); a performers model's proteins are packed end to end in rows of --max-tokens real
tokens (--no-pack: sorted by length and padded, --max-tokens padded tokens per batch; a Hugging
Face model always pads); a protein embedded alone gets the same vectors as in a packed row or
a padded batch, up to float rounding.
Proteins are read whole (FAVOR+ keeps the cost of a protein linear in its length) under the one
cropping rule of every command: cut only when asked (--max-length N tokens, i.e. the first N-2
residues; or esm-extract's --truncation-length R residues, the same as --max-length R+2) or
where a model's learned positions end (rotary models: never); a line counts the cropped proteins.

Output keys: the FASTA id (the first word of each header) when one layer and one kind are
asked for; otherwise ID/KIND/LAYER for each (e.g. P12345/mean/6, the layer counted from 0 as
above). The file's metadata (safetensors header) records the layers, kinds and key format."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "embed", help=HELP, description=DESCRIPTION, formatter_class=RawHelpFormatter
    )
    add_protein_model_options(parser)
    parser.add_argument("--out", required=True, help="output file: .npz or .safetensors (keys: see above)")
    layers = parser.add_argument(
        "--repr-layers",
        type=int,
        nargs="+",
        default=[-1],
        metavar="LAYER",
        help="layers to return: 0 = embeddings, 1..num_layers = block outputs, negative from the "
        "end (default: -1, the last, after the final LayerNorm)",
    )
    add_hidden_alias(parser, "--layer", layers)  # the earlier spelling (one layer)
    add_hidden_alias(parser, "--repr_layers", layers)  # esm-extract's
    include = parser.add_argument(
        "--include",
        nargs="+",
        choices=INCLUDES,
        default=["mean"],
        help="what to keep per layer: mean over residues, per_tok (one row per residue), bos "
        "(the <cls> vector) (default: mean)",
    )
    parser.add_argument(
        "--per-residue", dest=include.dest, action="store_const", const=["per_tok"],
        default=argparse.SUPPRESS, help=argparse.SUPPRESS,
    )  # fmt: skip
    truncation = parser.add_argument(
        "--truncation-length",
        type=int,
        default=None,
        metavar="R",
        help="keep each protein's first R residues (esm-extract's spelling of --max-length R+2); "
        "default: the one cropping rule, as --max-length",
    )
    add_hidden_alias(parser, "--truncation_seq_length", truncation)  # esm-extract's
    add_crop_option(parser)
    add_pack_option(parser)
    return parser


def _truncation(args: argparse.Namespace) -> int | None:
    if args.max_length is None:
        return args.truncation_length
    if args.truncation_length is not None:
        raise UsageError("give --truncation-length (residues), not also --max-length")
    if args.max_length < 3:
        raise UsageError(f"--max-length must be >= 3 (<cls>, one residue, <eos>), got {args.max_length}")
    return args.max_length - 2


def _keys(embeddings: dict, layers: list[int], kinds: list[str]) -> dict:
    """``{key: tensor}``: the id alone for one layer and one kind, else ``ID/KIND/LAYER``."""
    if len(layers) == 1 and len(kinds) == 1:
        return {name: out[kinds[0]][layers[0]] for name, out in embeddings.items()}
    return {
        f"{name}/{kind}/{layer}": out[kind][layer]
        for name, out in embeddings.items()
        for kind in kinds
        for layer in layers
    }


def _describe_layer(layer: int, num_layers: int) -> str:
    if layer == num_layers:
        return f"{layer} (after the final LayerNorm)"
    return f"{layer} (embeddings)" if layer == 0 else f"{layer}"


def run(args: argparse.Namespace) -> int:
    if not args.out.lower().endswith((".npz", ".safetensors")):
        raise UsageError(f"--out {args.out}: must end in .npz or .safetensors")
    check_output_file(args.out)
    compute_device(args)  # a --device or --threads the machine refuses, before reading anything
    truncation = _truncation(args)
    records = read_records(args.input)
    model, tokenizer = load_model(args)
    lm = as_protein_lm(model, tokenizer)
    kinds = list(dict.fromkeys(args.include))
    with user_errors_named(option_names(args.command_parser)):  # a protein or option the model refuses
        layers = resolve_layers(args.repr_layers, lm.num_layers)
        # The one cropping rule (docs/guides/proteins.md): asked for, or the learned positions.
        asked = {"max_length": args.max_length, "truncation_length": args.truncation_length}
        pairs, crop = crop_to_rule(protein_pairs(records), lm.residue_limit, **asked)
        start = time.perf_counter()
        embeddings = extract_representations(
            lm, None, pairs, repr_layers=layers, include=kinds, max_tokens=args.max_tokens, pack=args.pack
        )
        seconds = time.perf_counter() - start
        tensors = _keys(embeddings, layers, kinds)
        metadata = {
            "repr_layers": " ".join(map(str, layers)),
            "include": " ".join(kinds),
            "keys": "id" if len(tensors) == len(embeddings) else "id/include/layer",
            "num_layers": str(lm.num_layers),
            "model": str(args.model),
            "truncation_length": str(truncation),
            "crop_limit": str(crop.limit),  # residues kept at most (None: whole proteins)
            "cropped": str(len(crop.cropped)),
        }
        write_embeddings(tensors, args.out, metadata=metadata)
    residues = sum(len(sequence) for _, sequence in pairs)
    width = next(iter(tensors.values())).shape[-1]  # d_model, or a Hugging Face model's hidden size
    lengths = [len(sequence) for _, sequence in pairs]
    shapes = {
        "mean": f"mean ({width},)",
        "per_tok": f"per_tok (L, {width}) with L {min(lengths)}..{max(lengths)}",
        "bos": f"bos ({width},)",
    }
    for line in crop.messages():
        print(line)
    layer_text = ", ".join(_describe_layer(layer, lm.num_layers) for layer in layers)
    keys = "keyed by FASTA id" if metadata["keys"] == "id" else "keys ID/KIND/LAYER"
    print(
        f"wrote {len(embeddings)} proteins' representations to {args.out} ({keys}): "
        f"{', '.join(shapes[k] for k in kinds)}; layer(s) {layer_text} of {lm.num_layers}; {args.dtype}; "
        f"{residues} residues in {seconds:.3f} s ({len(pairs) / seconds:.1f} proteins/s, "
        f"{residues / seconds:.0f} residues/s)"
    )
    return 0
