"""``performers convert``: switch a Hugging Face model directory to FAVOR attention and save it
(:func:`performers.integrations.transformers.performerize`; the ``[hf]`` extra).

The saved ``config.json`` holds ``favor_config`` and ``attn_implementation: "favor"``: reloading
it with ``from_pretrained`` runs FAVOR+ (after ``import performers.integrations.transformers``),
and without that import Hugging Face refuses the unknown attention instead of silently running
softmax.

``--check`` first runs :func:`performers.jobs.diagnose_model` on a small sample
(``--check-limit`` sentences, the shipped STS-B test sentences unless ``--check-data``) and
prints its recommendation and how the chosen kernel and M fare, then converts.
"""

from __future__ import annotations

import argparse

from performers.cli.favor_options import add_favor_options, favor_config_from_args
from performers.cli.options import (
    add_compute_options,
    add_diagnosis_options,
    check_output_dir,
    compute_device,
    run_diagnosis,
)
from performers.jobs.diagnose import DEFAULT_FEATURES, DEFAULT_KERNELS
from performers.jobs.diagnose_report import format_summary

HELP = (
    "switch a Hugging Face model directory (BERT, RoBERTa, ESM, GPT-2, Llama) to FAVOR+ attention and save it"
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("convert", help=HELP, description=HELP)
    parser.add_argument(
        "model",
        help="a save_pretrained directory (BERT, RoBERTa, ESM, GPT-2 or Llama; another family is refused)",
    )
    parser.add_argument("out", help="output directory (config.json with favor_config, weights, tokenizer)")
    add_favor_options(parser)
    check = parser.add_argument_group("check before converting (performers diagnose on a sample)")
    check.add_argument(
        "--check", action="store_true", help="diagnose FAVOR's error on a small sample first and print it"
    )
    check.add_argument("--check-limit", type=int, default=32, help="sentences of the sample")
    add_diagnosis_options(check, prefix="check-")
    add_compute_options(parser)  # --device: where --check runs the model (converting is a copy)
    return parser


def _check(args: argparse.Namespace, kernel: str, num_features: int | None, device) -> None:
    """Print the diagnosis of ``args.model`` and the verdict on the chosen kernel and M."""
    features = sorted({*DEFAULT_FEATURES, *([num_features] if num_features else [])})
    kernels = list(dict.fromkeys([*args.check_kernels, *([kernel] if kernel in DEFAULT_KERNELS else [])]))
    report = run_diagnosis(
        args.model,
        data=args.check_data,
        limit=args.check_limit,
        max_length=args.check_max_length,
        kernels=kernels,
        feature_counts=features,
        tolerance=args.check_tolerance,
        draws=args.check_draws,
        projection=args.check_projection,
        max_queries=16,
        device=device,
    )
    print(format_summary(report))
    chosen = [h for h in report.heads if h.kernel == kernel]
    if chosen and num_features:
        meeting = sum(1 for h in chosen if h.smallest_m is not None and h.smallest_m <= num_features)
        print(
            f"check: this conversion (kernel {kernel!r}, M = {num_features}): {meeting} of {len(chosen)} "
            f"heads meet the tolerance {args.check_tolerance} on the sample"
        )


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.out, "OUT")
    device = compute_device(args)
    from performers.integrations.transformers import load_hf_model, performerize

    favor = favor_config_from_args(args)
    # UnsupportedModelError: a family the FAVOR attention does not support (before its weights load)
    model, tokenizer = load_hf_model(args.model, supported_only=True)
    if args.check:
        _check(args, favor.kernel, favor.num_features, device)
    performerize(model, favor)
    model.save_pretrained(args.out)
    if tokenizer is not None:
        tokenizer.save_pretrained(args.out)
    print(
        f"wrote {args.out}: {type(model).__name__} with FAVOR+ attention (kernel {favor.kernel}, "
        f"M = {favor.num_features}); load it with AutoModel.from_pretrained(path) after importing "
        "performers.integrations.transformers (it runs FAVOR+; attn_implementation='sdpa' runs softmax)"
    )
    return 0
