"""``performers score``: log-likelihoods of proteins and zero-shot variant effects
(:func:`performers.jobs.scoring.score_proteins` / ``variant_effects``)."""

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
from performers.jobs.scoring import score_proteins, variant_effects
from performers.models import PerformerForCausalLM
from performers.utils import write_csv

HELP = "per-sequence log-likelihood / perplexity, and variant effects against a wild type -> CSV"
DESCRIPTION = f"""{HELP}.

A protein of n residues is encoded as [<cls>, residues..., <eos>]. Causal models: the exact
log-likelihood, the sum of log p of the n residues and of the <eos> given their prefixes (n + 1
terms), one forward pass per protein. Masked models: the pseudo-log-likelihood, the sum over
residues of log p(true residue) with that residue masked: n masked copies of n + 2 tokens, i.e.
n forward passes' worth of tokens per protein — O(n^2 * M * D) time per layer with FAVOR+
(O(n^3 * D) with exact attention), batched by --max-tokens. Columns:
id,length,log_likelihood,perplexity,terms,method (natural log; perplexity = exp(-LL / terms)).

With --wildtype, each input sequence (same length as the wild type: substitutions only) is
scored against it instead: masked models, the masked-marginal log-odds (mask every mutated
position of the wild type in one pass, sum log p(mutant) - log p(wild type) there); causal
models, LL(variant) - LL(wild type). Columns: id,mutations,num_mutations,score,method
(mutations as V39A:D40G, 1-based); higher = more likely than the wild type."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "score", help=HELP, description=DESCRIPTION, formatter_class=RawHelpFormatter
    )
    add_protein_model_options(parser)
    parser.add_argument("--out", required=True, help="output CSV")
    parser.add_argument(
        "--wildtype",
        default=None,
        metavar="WT.fasta",
        help="FASTA with one wild-type record: score each input sequence as a variant of it",
    )
    add_crop_option(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.wildtype is not None and args.max_length is not None:
        raise UsageError("--max-length cannot crop variants (mutations must keep their positions)")
    check_output_file(args.out)
    records = read_records(args.input)
    wildtype = None
    if args.wildtype is not None:
        wildtypes = read_records(args.wildtype, "--wildtype")
        if len(wildtypes) != 1:
            raise UsageError(f"--wildtype {args.wildtype}: expected one record, found {len(wildtypes)}")
        wildtype = wildtypes[0]
    model, tokenizer = load_model(args)
    causal = isinstance(model, PerformerForCausalLM)
    start = time.perf_counter()
    with user_errors_named(option_names(args.command_parser)):  # a protein or option the model refuses
        if wildtype is None:
            rows = score_proteins(
                model, tokenizer, records, max_tokens=args.max_tokens, max_length=args.max_length
            )
        else:
            rows = variant_effects(model, tokenizer, wildtype, records, max_tokens=args.max_tokens)
    seconds = time.perf_counter() - start
    write_csv(rows, args.out)
    if wildtype is None:
        residues = sum(row["length"] for row in rows)
        what = "log-likelihoods (exact, causal)" if causal else "pseudo-log-likelihoods (masked)"
        cropped = sum(len(r.sequence) > row["length"] for r, row in zip(records, rows, strict=True))
        if cropped:
            print(
                f"cropped {cropped} protein(s) to their first {args.max_length - 2} residues (--max-length)"
            )
    else:
        residues = len(wildtype.sequence) * len(rows)
        method = "log-likelihood ratios (causal)" if causal else "masked-marginal log-odds (masked)"
        what = f"variant scores against {wildtype.id}, {method}"
    print(
        f"wrote {len(rows)} {what} to {args.out} in {seconds:.3f} s "
        f"({len(rows) / seconds:.1f} proteins/s, {residues / seconds:.0f} residues/s)"
    )
    return 0
