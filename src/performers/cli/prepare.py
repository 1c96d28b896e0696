"""``performers prepare``: FASTA files → a prepared dataset directory (memory-mapped token shards,
index, tokenizer, manifest) for training and evaluation at corpus scale
(:func:`performers.proteins.prepared.prepare`)."""

from __future__ import annotations

import argparse

from performers.cli.common import RawHelpFormatter, UsageError, option_names, user_errors_named
from performers.cli.options import check_output_dir
from performers.proteins.prepared import DEFAULT_SHARD_TOKENS, PreparedDatasetError, prepare, verify_prepared

HELP = "FASTA (plain or gzip, one or many files) -> a prepared, memory-mapped dataset directory"
DESCRIPTION = f"""{HELP}.

Splits come from the header tags (split=train|valid|test, or FLIP's SET=train|test with
VALIDATION=True|False), from per-split files (--train/--valid/--test), or, with
--valid-fraction/--test-fraction, from a hash of each sequence (the same protein always lands in
the same split, whatever the files and their order; tags are then ignored). Each protein is
stored as the tokenizer's [<cls>, residues..., <eos>] ids. The directory is written next to
--out and renamed into place when complete: a failure leaves nothing behind.

The free space of --out's file system is checked first against the inputs' uncompressed size
(the size of the result, about); a write refused midway (full disk, quota, size limit) removes
the partial directory and names the path and the bytes needed. --verify DIR re-hashes the files
of a prepared dataset against its manifest and names each one that changed or is missing.

example: performers prepare uniref50.fasta.gz --out data/uniref50 --valid-fraction 0.01 \\
         --test-fraction 0.01 --dedupe
         performers prepare --verify data/uniref50"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "prepare", help=HELP, description=DESCRIPTION, formatter_class=RawHelpFormatter
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="FASTA files (plain or gzip) whose records carry split tags, or are split by hash "
        "(--valid-fraction/--test-fraction)",
    )
    parser.add_argument("--out", help="the dataset directory to create (required unless --verify)")
    parser.add_argument(
        "--verify",
        metavar="DIR",
        help="check every file of the prepared dataset DIR against its manifest (size and SHA-256) "
        "instead of preparing; exit status 2 naming each file that changed or is missing",
    )
    for split in ("train", "valid", "test"):
        parser.add_argument(
            f"--{split}",
            nargs="+",
            default=[],
            metavar="FILE",
            help=f"FASTA files whose every record goes to the {split} split (instead of INPUT)",
        )
    parser.add_argument(
        "--valid-fraction",
        type=float,
        default=0.0,
        help="share of proteins in the valid split, chosen by a hash of the sequence",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.0,
        help="share of proteins in the test split, chosen by a hash of the sequence",
    )
    parser.add_argument(
        "--dedupe",
        action="store_true",
        help="drop a protein whose sequence equals an earlier one "
        "(keeps 16 bytes per unique sequence in memory)",
    )
    parser.add_argument(
        "--skip-invalid",
        action="store_true",
        help="skip malformed records (illegal character, empty record or header) and count them in the "
        "manifest instead of stopping; a truncated gzip or binary file still stops",
    )
    parser.add_argument(
        "--rare",
        choices=["keep", "map", "reject"],
        default="keep",
        help="rare residues X B Z U O: keep them, map them (U->C, O->K, B/Z->X) or reject the record",
    )
    parser.add_argument(
        "--shard-tokens",
        type=int,
        default=DEFAULT_SHARD_TOKENS,
        help="tokens (bytes) per shard file",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists (once complete)")
    return parser


def verify(directory: str) -> int:
    """``--verify DIR``: 0 and one line when every file matches; else a user error listing each
    problem (one line, exit 2)."""
    problems = verify_prepared(directory)
    if problems:
        raise PreparedDatasetError(
            f"{directory}: {len(problems)} file(s) do not match the manifest: {'; '.join(problems)}"
        )
    print(f"{directory}: every file matches its manifest (sizes and SHA-256)")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.verify is not None:
        if args.out or args.inputs or any(getattr(args, s) for s in ("train", "valid", "test")):
            raise UsageError("--verify DIR checks a prepared dataset: give no INPUT, --out or split files")
        return verify(args.verify)
    if not args.out:
        raise UsageError("--out is required (the dataset directory to create)")
    check_output_dir(args.out)
    per_split = {split: getattr(args, split) for split in ("train", "valid", "test") if getattr(args, split)}
    if args.inputs and per_split:
        raise UsageError("give either INPUT files or --train/--valid/--test files, not both")
    if not args.inputs and not per_split:
        raise UsageError("no input (give INPUT files or --train/--valid/--test files)")
    with user_errors_named(option_names(args.command_parser)):  # what the files or options break
        prepare(
            per_split or args.inputs,
            args.out,
            valid_fraction=args.valid_fraction,
            test_fraction=args.test_fraction,
            dedupe=args.dedupe,
            skip_invalid=args.skip_invalid,
            rare=args.rare,
            shard_tokens=args.shard_tokens,
            overwrite=args.overwrite,
            log=print,
        )
    return 0
