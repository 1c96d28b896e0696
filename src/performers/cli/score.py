"""``performers score``: log-likelihoods of proteins and zero-shot variant effects
(:func:`performers.jobs.scoring.score_proteins`, ``variant_effects`` and ``score_dms``; mutant
lists and saturation scans with :mod:`performers.jobs.variant_scan`, the heatmap with
:func:`performers.jobs.heatmap.plot_saturation`)."""

from __future__ import annotations

import argparse
import importlib.util
import math
import time
from pathlib import Path

from performers.cli.common import RawHelpFormatter, UsageError, option_names, user_errors_named
from performers.cli.options import (
    add_crop_option,
    add_pack_option,
    add_protein_model_options,
    check_output_file,
    compute_device,
    load_model,
    read_records,
)
from performers.jobs.heatmap import plot_saturation
from performers.jobs.protein_lm import as_protein_lm
from performers.jobs.results_file import Metric, write_results
from performers.jobs.scoring import (
    STRATEGIES,
    MutationError,
    check_strategy,
    score_dms,
    score_proteins,
    variant_effects,
    write_dms_scores,
)
from performers.jobs.variant_scan import (
    blosum62_spearman,
    parse_mutants,
    parse_positions,
    read_mutants_file,
    saturation_scan,
    score_mutation_list,
)
from performers.models import PerformerForCausalLM
from performers.utils import write_csv

HELP = (
    "per-sequence log-likelihood / perplexity, and variant effects (mutant lists, saturation scans "
    "with a heatmap, ProteinGym DMS files) -> CSV"
)
DESCRIPTION = f"""{HELP}.

Five modes:

  performers score MODEL proteins.fasta --out scores.csv
  performers score MODEL variants.fasta --wildtype WT.fasta --out effects.csv
  performers score MODEL --dms ASSAY.csv --wildtype WT.fasta --out scores.csv
  performers score MODEL --wildtype WT.fasta --mutations A23G,L5P:L11W --out mutants.csv
  performers score MODEL --wildtype WT.fasta --saturation [--positions 10-120] --out scan.csv

Per sequence. A protein of n residues is encoded as [<cls>, residues..., <eos>]. Causal models:
the exact log-likelihood, the sum of log p of the n residues and of the <eos> given their
prefixes (n + 1 terms), one forward pass per protein. Masked models: the pseudo-log-likelihood,
the sum over residues of log p(true residue) with that residue masked: n masked copies of n + 2
tokens, i.e. n forward passes' worth of tokens per protein — O(n^2 * M * D) time per layer with
FAVOR+ (O(n^3 * D) with exact attention); the copies of all the proteins are packed into
batches of --max-tokens padded tokens. Columns:
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
OUT.spearman.json and, beside it, results.json with its baseline: the Spearman of the BLOSUM62
score (the sum of BLOSUM62[wt, mt] over a mutant's substitutions) on the same rows.

Mutants without sequences: --mutations A23G,L5P:L11W (',' between mutants, ':' joining the
substitutions of a multi-mutant; WT is the wild type) or --mutations-file FILE (the same, one or
more per line, or a CSV with a --mutation-col column), numbered from --offset; a wrong wild-type
letter or a position outside the wild type is an error naming the mutant. --saturation scores
every substitution to the 20 standard amino acids (19 per position) at --positions (e.g. 10-120
or 1-5,30; default all), with masked-marginals one masked forward pass per position (batched
by --max-tokens). Columns: mutant,position,wildtype,mutant_aa,score. A saturation scan also
draws its heatmap (positions x amino acids, diverging colours centred at 0, a dot on each wild
type; long proteins in panels of 100 positions) to --heatmap, default OUT with .png (needs
matplotlib). Whole proteins are scored without windows (FAVOR+ is
linear in the length), cropped only by the one rule of every command (--max-length, or a
model's learned positions; counted when it happens). Variants are never cropped (a mutation's
position needs the whole wild type): a model with learned positions refuses a longer wild type,
a rotary one takes any length (the exact twin at O(L^2) memory per pass; past its training
length its scores are extrapolations).

A Hugging Face protein model directory works as well: ESM and ProtBert are masked models (every
strategy above), a ProtGPT2-style GPT-2 a causal one whose byte-pair tokens span several
residues: its log-likelihood sums over its own tokens (terms = tokens + 1) and the masked
strategies, which mask one residue at a time, are refused."""

PACK_HELP = (
    "per-sequence log-likelihoods of a causal performers model: the proteins end to end in rows of "
    "--max-tokens real tokens (the default), or padded batches (--no-pack); a Hugging Face "
    "model always pads (--pack refuses it). Pseudo-log-likelihoods and variant scores never "
    "pack: their batches are copies of proteins of one length, with little or no padding"
)
DMS_DEFAULTS = {"mutation_col": "mutant", "target_col": "DMS_score", "offset": 1}


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "score", help=HELP, description=DESCRIPTION, formatter_class=RawHelpFormatter
    )
    add_protein_model_options(parser, input_help="not with --dms, --mutations or --saturation")
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
        "--mutation-col",
        default=None,
        help="--dms (or --mutations-file CSV) column of mutants such as A12G:D15E (default: mutant)",
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
        help="--dms, --mutations, --saturation: the number of the wild type's first residue (default: 1)",
    )
    variants = parser.add_argument_group("mutants of --wildtype without sequences")
    variants.add_argument(
        "--mutations",
        default=None,
        metavar="A23G,L5P:L11W",
        help="mutants to score: ',' between mutants, ':' joining a multi-mutant's substitutions",
    )
    variants.add_argument(
        "--mutations-file",
        default=None,
        metavar="FILE",
        help="mutants to score, as --mutations, one or more per line (or a CSV with --mutation-col)",
    )
    variants.add_argument(
        "--saturation",
        action="store_true",
        help="score every single substitution (19 per position) and draw the heatmap",
    )
    variants.add_argument(
        "--positions",
        default=None,
        metavar="10-120",
        help="--saturation: the positions to scan, e.g. 10-120 or 1-5,30 (default: all)",
    )
    variants.add_argument(
        "--heatmap",
        default=None,
        metavar="PATH.png",
        help="--saturation: where the heatmap goes (default: --out with the suffix .png)",
    )
    add_crop_option(parser)
    add_pack_option(parser, PACK_HELP)
    return parser


def _variant_mode(args: argparse.Namespace) -> str | None:
    """``--mutations``, ``--mutations-file`` or ``--saturation`` when one is given."""
    flags = {
        "--mutations": args.mutations is not None,
        "--mutations-file": args.mutations_file is not None,
        "--saturation": args.saturation,
    }
    given = [name for name, on in flags.items() if on]
    if len(given) > 1:
        raise UsageError(
            f"give one of --mutations, --mutations-file and --saturation, got {' and '.join(given)}"
        )
    return given[0] if given else None


def _check_modes(args: argparse.Namespace) -> None:
    mode = _variant_mode(args)
    if args.pack and (mode is not None or args.wildtype is not None):
        raise UsageError(
            "--pack: variant scores never pack (every pass holds the wild type or a mutant of its "
            "length, so their batches have no padding to save); drop --pack"
        )
    saturation_only = [f"--{name}" for name in ("positions", "heatmap") if getattr(args, name) is not None]
    if saturation_only and mode != "--saturation":
        raise UsageError(f"{', '.join(saturation_only)} belong to a saturation scan: add --saturation")
    if mode is not None:
        if args.wildtype is None:
            raise UsageError(f"{mode} needs --wildtype WT.fasta (the sequence the mutants refer to)")
        if args.input is not None or args.dms is not None:
            other = args.input if args.input is not None else f"--dms {args.dms}"
            raise UsageError(
                f"{mode} scores mutants of --wildtype: give no FASTA input or --dms (got {other})"
            )
        if args.max_length is not None:
            raise UsageError("--max-length cannot crop variants (mutations must keep their positions)")
        if args.target_col is not None or (args.mutation_col is not None and mode != "--mutations-file"):
            raise UsageError(
                "--mutation-col and --target-col read a --dms file "
                "(--mutation-col also a --mutations-file CSV)"
            )
        return
    dms_only = [f"--{name.replace('_', '-')}" for name in DMS_DEFAULTS if getattr(args, name) is not None]
    if args.dms is not None:
        if args.input is not None:
            raise UsageError(f"give a FASTA input or --dms, not both (got {args.input} and --dms {args.dms})")
        if args.wildtype is None:
            raise UsageError("--dms needs --wildtype WT.fasta (the sequence its mutants refer to)")
    else:
        if args.input is None:
            raise UsageError(
                "the following arguments are required: input (or --dms ASSAY.csv, --mutations, "
                "--mutations-file or --saturation with --wildtype)"
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
        baseline, baseline_count, results = _write_dms_results(args, result)
        shown = "n/a" if baseline is None or math.isnan(baseline) else f"{baseline:.4f}"
        print(
            f"Spearman {result.spearman:.4f} between score and {result.assay.target_col} over "
            f"{result.count} rows; BLOSUM62 baseline {shown} over {baseline_count} rows "
            f"(written to {written[1]} and {results})"
        )
    return 0


def _write_dms_results(args: argparse.Namespace, result) -> tuple[float, int, Path]:
    """``results.json`` beside ``--out``: the model's Spearman and, as its baseline, that of the
    BLOSUM62 sum on the rows with a target; returns the baseline, its row count and the path."""
    baseline, baseline_count = blosum62_spearman(result.assay.mutants, result.assay.targets)
    metric = Metric(result.spearman, baseline, "BLOSUM62 sum", higher_is_better=True, count=result.count)
    path = write_results(
        Path(args.out).parent / "results.json",
        command="score",
        metrics={"spearman": metric},
        baseline_count=baseline_count,
        strategy=result.strategy,
        target_col=result.assay.target_col,
        assay=str(args.dms),
        model=str(args.model),
        wildtype=str(args.wildtype),
        scores=str(args.out),
    )
    return baseline, baseline_count, path


def _read_mutants(args: argparse.Namespace, wildtype) -> list | None:
    """The mutants of ``--mutations`` / ``--mutations-file``, or the positions of
    ``--saturation``; checked against the wild type before the model is loaded."""
    offset = 1 if args.offset is None else args.offset
    sequence = wildtype.sequence.upper()
    try:
        if args.mutations is not None:
            return parse_mutants(args.mutations, sequence, offset=offset)
        if args.mutations_file is not None:
            column = args.mutation_col or "mutant"
            return read_mutants_file(args.mutations_file, sequence, offset=offset, column=column)
        positions = "" if args.positions is None else args.positions
        return parse_positions(positions, len(sequence), offset=offset) if positions else None
    except MutationError as error:
        option = (
            "--positions" if args.saturation else "--mutations-file" if args.mutations_file else "--mutations"
        )
        raise UsageError(f"{option}: {error}") from None
    except OSError as error:
        raise UsageError(f"--mutations-file {args.mutations_file}: {error.strerror or error}") from None


def _heatmap_path(args: argparse.Namespace) -> Path:
    path = Path(args.out).with_suffix(".png") if args.heatmap is None else Path(args.heatmap)
    check_output_file(str(path), "--heatmap")
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--saturation draws a heatmap with matplotlib: pip install 'performers[bench]'")
    return path


def _run_mutants(args: argparse.Namespace, mutants: list | None, wildtype) -> int:
    """``--mutations`` / ``--mutations-file`` (``mutants``) or ``--saturation`` (``mutants``:
    the positions, None for all): the CSV, and a scan's heatmap."""
    heatmap = _heatmap_path(args) if args.saturation else None
    model, tokenizer = load_model(args)
    offset = 1 if args.offset is None else args.offset
    options = {"strategy": args.strategy, "offset": offset, "max_tokens": args.max_tokens}
    start = time.perf_counter()
    with user_errors_named(option_names(args.command_parser)):
        if args.saturation:
            positions = None if mutants is None else [p + offset - 1 for p in mutants]
            scan = saturation_scan(model, tokenizer, wildtype.sequence, positions=positions, **options)
            rows, strategy = scan.to_rows(), scan.strategy
        else:
            strategy = check_strategy(as_protein_lm(model, tokenizer), args.strategy)
            rows = score_mutation_list(model, tokenizer, wildtype.sequence, mutants, **options)
    seconds = time.perf_counter() - start
    write_csv(rows, args.out)
    what = "substitutions (saturation scan)" if args.saturation else "mutant scores"
    print(
        f"wrote {len(rows)} {what} ({strategy}) against {wildtype.id} to {args.out} in {seconds:.3f} s "
        f"({len(rows) / seconds:.1f} variants/s)"
    )
    if heatmap is not None:
        print(
            f"heatmap of {len(scan.positions)} positions x 20 amino acids: {plot_saturation(scan, heatmap)}"
        )
    return 0


def _is_causal(model) -> bool:
    return isinstance(model, PerformerForCausalLM) or getattr(model, "is_causal", False)


def run(args: argparse.Namespace) -> int:
    _check_modes(args)
    check_output_file(args.out)
    compute_device(args)  # a --device or --threads the machine refuses, before reading anything
    wildtype = None if args.wildtype is None else _read_wildtype(args.wildtype)
    if _variant_mode(args) is not None:
        return _run_mutants(args, _read_mutants(args, wildtype), wildtype)
    records = None if args.input is None else read_records(args.input)
    model, tokenizer = load_model(args)
    if args.dms is not None:
        return _run_dms(args, model, tokenizer, wildtype)
    causal = _is_causal(model)
    start = time.perf_counter()
    with user_errors_named(option_names(args.command_parser)):  # a protein or option the model refuses
        if wildtype is None:
            rows = score_proteins(
                model,
                tokenizer,
                records,
                max_tokens=args.max_tokens,
                max_length=args.max_length,
                pack=args.pack,
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
