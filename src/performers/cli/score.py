"""``performers score``: log-likelihoods of proteins and zero-shot variant effects
(:func:`performers.jobs.scoring.score_proteins`, ``variant_effects`` and ``score_dms``)."""

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
from performers.jobs.scoring import STRATEGIES, score_dms, score_proteins, variant_effects, write_dms_scores
from performers.models import PerformerForCausalLM
from performers.utils import write_csv

HELP = "per-sequence log-likelihood / perplexity, and variant effects (ProteinGym DMS files) -> CSV"
DESCRIPTION = f"""{HELP}.

Three modes:

  performers score MODEL proteins.fasta --out scores.csv
  performers score MODEL variants.fasta --wildtype WT.fasta --out effects.csv
  performers score MODEL --dms ASSAY.csv --wildtype WT.fasta --out scores.csv

Per sequence. A protein of n residues is encoded as [<cls>, residues..., <eos>]. Causal models:
the exact log-likelihood, the sum of log p of the n residues and of the <eos> given their
prefixes (n + 1 terms), one forward pass per protein. Masked models: the pseudo-log-likelihood,
the sum over residues of log p(true residue) with that residue masked: n masked copies of n + 2
tokens, i.e. n forward passes' worth of tokens per protein — O(n^2 * M * D) time per layer with
FAVOR+ (O(n^3 * D) with exact attention), batched by --max-tokens. Columns:
id,length,scored_length,log_likelihood,perplexity,terms,method (natural log; perplexity =
exp(-LL / terms); length: the protein's residues, scored_length: those scored).

Variant effects (--wildtype), with ESM's strategies (--strategy), higher = more likely than the
wild type; a multi-mutant's substitutions (i, wt -> mt):
  masked-marginals  sum over i of log p(mt) - log p(wt) at i, with i masked on its own in the
                    wild type (one masked pass per mutated position, shared by every mutant:
                    at most L passes for a whole assay); the default for masked models
  wt-marginals      the same differences from one unmasked pass of the wild type
  pseudo-ppl        pseudo-log-likelihood of the mutant minus that of the wild type (L masked
                    passes per mutant)
  log-likelihood-ratio  causal models (their default): LL(mutant) - LL(wild type)
A row without substitutions (the wild type) scores 0. The variants are either the sequences of
a FASTA file (same length as the wild type; columns id,mutations,num_mutations,score,method) or
the rows of a ProteinGym DMS CSV (--dms): --mutation-col holds A12G or A12G:D15E, numbered from
--offset (an empty entry, WT or _wt is the wild type); a mutant whose wild-type letter differs
from the wild type's, or whose position lies outside it, is an error naming the line. The
output is the CSV's rows with a score column; when --target-col is there, the Spearman
correlation of score and target (over the rows with a target) is printed and written to
OUT.spearman.json (beside the scores). Whole proteins are scored without windows (FAVOR+ is
linear in the length), cropped only by the one rule of every command (--max-length, or a
model's learned positions; counted when it happens). Variants are never cropped (a mutation's
position needs the whole wild type): a model with learned positions refuses a longer wild type,
a rotary one takes any length (the exact twin at O(L^2) memory per pass; past its training
length its scores are extrapolations).

A Hugging Face protein model directory works as well: ESM and ProtBert are masked models (every
strategy above), a ProtGPT2-style GPT-2 a causal one whose byte-pair tokens span several
residues: its log-likelihood sums over its own tokens (terms = tokens + 1) and the masked
strategies, which mask one residue at a time, are refused."""

DMS_DEFAULTS = {"mutation_col": "mutant", "target_col": "DMS_score", "offset": 1}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "score", help=HELP, description=DESCRIPTION, formatter_class=RawHelpFormatter
    )
    add_protein_model_options(parser, input_help="not with --dms")
    parser.add_argument("--out", required=True, help="output CSV")
    parser.add_argument(
        "--wildtype",
        default=None,
        metavar="WT.fasta",
        help="FASTA with one wild-type record: score the input sequences, or the --dms rows, as its variants",
    )
    parser.add_argument(
        "--dms",
        default=None,
        metavar="ASSAY.csv",
        help="a ProteinGym-style DMS CSV of mutants of --wildtype, scored instead of a FASTA input",
    )
    parser.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=None,
        help="how variants are scored (see above; default: masked-marginals for a masked model, "
        "log-likelihood-ratio for a causal one)",
    )
    parser.add_argument(
        "--mutation-col", default=None, help="--dms column of mutants such as A12G:D15E (default: mutant)"
    )
    parser.add_argument(
        "--target-col",
        default=None,
        help="--dms column of measured fitness for the Spearman correlation (default: DMS_score, "
        "skipped when absent; a column named here must exist)",
    )
    parser.add_argument(
        "--offset",
        type=int,
        default=None,
        help="--dms: the number of the wild type's first residue in the mutants (default: 1)",
    )
    add_crop_option(parser)
    return parser


def _check_modes(args: argparse.Namespace) -> None:
    dms_only = [f"--{name.replace('_', '-')}" for name in DMS_DEFAULTS if getattr(args, name) is not None]
    if args.dms is not None:
        if args.input is not None:
            raise UsageError(f"give a FASTA input or --dms, not both (got {args.input} and --dms {args.dms})")
        if args.wildtype is None:
            raise UsageError("--dms needs --wildtype WT.fasta (the sequence its mutants refer to)")
    else:
        if args.input is None:
            raise UsageError(
                "the following arguments are required: input (or --dms ASSAY.csv with --wildtype)"
            )
        if dms_only:
            raise UsageError(f"{', '.join(dms_only)} read a --dms file; give --dms ASSAY.csv")
    if args.wildtype is None and args.strategy is not None:
        raise UsageError("--strategy scores variants: give --wildtype (with variant FASTA or --dms)")
    if args.wildtype is not None and args.max_length is not None:
        raise UsageError("--max-length cannot crop variants (mutations must keep their positions)")


def _read_wildtype(path: str):
    wildtypes = read_records(path, "--wildtype")
    if len(wildtypes) != 1:
        raise UsageError(f"--wildtype {path}: expected one record, found {len(wildtypes)}")
    return wildtypes[0]


def _run_dms(args: argparse.Namespace, model, tokenizer, wildtype) -> int:
    options = {name: default if getattr(args, name) is None else getattr(args, name)
               for name, default in DMS_DEFAULTS.items()}  # fmt: skip
    start = time.perf_counter()
    with user_errors_named(option_names(args.command_parser)):
        try:
            result = score_dms(
                model,
                tokenizer,
                wildtype.sequence,
                args.dms,
                **options,
                require_target=args.target_col is not None,
                strategy=args.strategy,
                max_tokens=args.max_tokens,
            )
        except OSError as error:
            raise UsageError(f"--dms {args.dms}: {error.strerror or error}") from None
        seconds = time.perf_counter() - start
        written = write_dms_scores(
            result, args.out, metadata={"model": str(args.model), "wildtype": str(args.wildtype)}
        )
    rows = len(result.scores)
    print(
        f"wrote {rows} variant scores ({result.strategy}) of {args.dms} against {wildtype.id} to "
        f"{args.out} in {seconds:.3f} s ({rows / seconds:.1f} variants/s)"
    )
    if result.spearman is not None:
        print(
            f"Spearman {result.spearman:.4f} between score and {result.assay.target_col} over "
            f"{result.count} rows (written to {written[1]})"
        )
    return 0


def run(args: argparse.Namespace) -> int:
    _check_modes(args)
    check_output_file(args.out)
    wildtype = None if args.wildtype is None else _read_wildtype(args.wildtype)
    records = None if args.input is None else read_records(args.input)
    model, tokenizer = load_model(args)
    if args.dms is not None:
        return _run_dms(args, model, tokenizer, wildtype)
    causal = isinstance(model, PerformerForCausalLM) or getattr(model, "is_causal", False)
    start = time.perf_counter()
    with user_errors_named(option_names(args.command_parser)):  # a protein or option the model refuses
        if wildtype is None:
            rows = score_proteins(
                model, tokenizer, records, max_tokens=args.max_tokens, max_length=args.max_length
            )
        else:
            rows = variant_effects(
                model, tokenizer, wildtype, records, strategy=args.strategy, max_tokens=args.max_tokens
            )
    seconds = time.perf_counter() - start
    write_csv(rows, args.out)
    if wildtype is None:
        residues = sum(row["scored_length"] for row in rows)
        what = "log-likelihoods (exact, causal)" if causal else "pseudo-log-likelihoods (masked)"
        for line in rows.crop.messages():  # the one cropping rule (docs/guides/proteins.md)
            print(line)
    else:
        residues = len(wildtype.sequence) * len(rows)
        what = f"variant scores against {wildtype.id} ({rows[0]['method']})"
    print(
        f"wrote {len(rows)} {what} to {args.out} in {seconds:.3f} s "
        f"({len(rows) / seconds:.1f} proteins/s, {residues / seconds:.0f} residues/s)"
    )
    return 0
