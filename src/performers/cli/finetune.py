"""``performers finetune``: a head on a trained or randomly initialized encoder, fine-tuned on
labelled proteins in FLIP's conventions (:func:`performers.jobs.finetune`): per-residue
classes (secondary structure, conservation, or your own label FASTA) or a sequence-level target
(GB1 fitness, or your own ``TARGET=`` FASTA). ``--resume`` continues the run in ``--out``
(e.g. one stopped by SIGTERM or SIGUSR1, :mod:`performers.training.signals`). The run ends with
``OUT/final/`` (the model ``performers predict`` runs), ``OUT/test_predictions.csv`` and
``OUT/results.json`` (each test metric beside its baseline)."""

from __future__ import annotations

import argparse

from performers.cli.common import UsageError, option_names, user_errors_named
from performers.cli.options import (
    add_checkpoint_option,
    add_model_options,
    add_resume_option,
    add_run_options,
    check_output_dir,
    compute_device,
    model_config_from_args,
    training_config_from_args,
)
from performers.jobs import finetune
from performers.jobs.finetuning import finetuning_encoder, labelled_splits
from performers.jobs.results_file import format_metric
from performers.proteins import SHIPPED_TASKS
from performers.training import SCHEDULES

HELP = "fine-tune on labelled proteins: per-residue classes (FLIP SS, conservation) or a sequence target"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("finetune", help=HELP, description=HELP)
    parser.add_argument(
        "--pretrained",
        default=None,
        help="a performers model or run directory, or a Hugging Face protein model directory (ESM, "
        "ProtBert, ProtGPT2) (default: random init; ProtGPT2, whose tokens span several residues, is "
        "refused)",
    )
    parser.add_argument("--freeze", action="store_true", help="train the head only (a linear probe)")
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="with --pretrained: its architecture, randomly initialized (the control run)",
    )
    data = parser.add_argument_group("labelled data (default: --task secondary_structure)")
    data.add_argument(
        "--task",
        choices=sorted(SHIPPED_TASKS),
        default=None,
        help="a FLIP task shipped with the package: secondary_structure (Q3), conservation, gb1 (regression)",
    )
    data.add_argument("--sequences", default=None, help="per-residue task: FASTA of the sequences")
    data.add_argument(
        "--labels",
        default=None,
        help="per-residue task: FASTA of one label per residue, split tags in headers",
    )
    data.add_argument(
        "--mask", default=None, help="per-residue task: FASTA of 1 (scored) / 0 (not) per residue"
    )
    data.add_argument(
        "--targets", default=None, help="regression: FASTA with TARGET=<float> and split tags in the headers"
    )
    group = parser.add_argument_group("fine-tuning")
    group.add_argument("--steps", type=int, default=200, help="optimizer steps")
    group.add_argument("--batch-size", type=int, default=16, help="proteins per step")
    group.add_argument("--max-length", type=int, default=256, help="tokens per protein crop")
    group.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    group.add_argument("--warmup", type=int, default=0, help="linear warm-up steps")
    group.add_argument(
        "--schedule", choices=SCHEDULES, default="constant", help="learning rate after warm-up"
    )
    group.add_argument("--eval-every", type=int, default=50, help="validation Q3 every N steps")
    add_checkpoint_option(group)
    group.add_argument("--train-limit", type=int, default=None, help="use only the first N training proteins")
    group.add_argument("--test-limit", type=int, default=None, help="score only the first N test proteins")
    add_model_options(parser)  # the random-init encoder
    add_run_options(parser, out="runs/finetune", device=True)
    add_resume_option(parser, may_change="--steps, --eval-every, --checkpoint-every, --threads")
    return parser


def _splits(args: argparse.Namespace) -> dict:
    """``{"train", "valid", "test"}`` of the chosen labelled data."""
    own = args.sequences or args.labels or args.mask
    if sum(bool(x) for x in (args.task, own, args.targets)) > 1:
        raise UsageError("choose one of --task, --sequences/--labels[/--mask], --targets")
    if own and not (args.sequences and args.labels):
        raise UsageError("a per-residue task needs both --sequences and --labels")
    with user_errors_named(option_names(args.command_parser)):  # what the labelled files break
        return labelled_splits(
            task=args.task,
            sequences=args.sequences,
            labels=args.labels,
            mask=args.mask,
            targets=args.targets,
            train_limit=args.train_limit,
            test_limit=args.test_limit,
        )


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.out)
    device = compute_device(args)
    splits = _splits(args)
    for name, data in splits.items():
        if len(data) == 0:
            raise UsageError(f"the {name} split is empty")
    config = None if args.pretrained else model_config_from_args(args)  # the random-init encoder
    encoder, source = finetuning_encoder(
        args.pretrained, random_init=args.random_init, config=config, seed=args.seed
    )
    # The data's kind (token classes or a sequence target) is the task; the optimizer's
    # weight decay and gradient clipping are fine-tuning's own.
    training = training_config_from_args(args, task=splits["train"].kind, weight_decay=0.01, grad_clip=1.0)
    details = {"encoder": source, "data": _data_description(args), "freeze_encoder": bool(args.freeze)}
    result = finetune(
        encoder,
        training,
        **splits,
        out_dir=args.out,
        freeze_encoder=args.freeze,
        resume=args.resume,
        device=device,
        details=details,
    )
    metrics = result["metrics"]
    shown = {
        "q3": ("Q3", True),
        "accuracy": ("accuracy", True),
        "spearman": ("Spearman", False),
        "mse": ("MSE", False),
    }
    parts = [
        format_metric(shown[name][0], metric, percent=shown[name][1]) for name, metric in metrics.items()
    ]
    count = next(iter(metrics.values())).count
    unit = "proteins" if splits["train"].kind == "regression" else "residues"
    print(
        f"{type(splits['train']).__name__} ({len(splits['train'])} train), encoder from {source}: "
        f"test {', '.join(parts)} over {count} {unit}"
    )
    out = args.out
    print(
        f"wrote {out}/final (the model: performers predict {out} PROTEINS.fasta), "
        f"{out}/test_predictions.csv, {out}/results.json, {out}/checkpoints and {out}/metrics.jsonl"
    )
    return 0


def _data_description(args: argparse.Namespace) -> dict:
    """What the labelled data was, for results.json."""
    if args.targets:
        return {"targets": args.targets}
    if args.sequences:
        return {"sequences": args.sequences, "labels": args.labels, "mask": args.mask}
    return {"task": args.task or "secondary_structure", "train_limit": args.train_limit,
            "test_limit": args.test_limit}  # fmt: skip
