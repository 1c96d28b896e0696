"""``performers bench kernel-sweep | baselines | pixels | text``: the paper's evidence beyond
proteins (:mod:`performers.bench.kernel_sweep`, :mod:`~performers.bench.baselines`,
:mod:`~performers.bench.pixels`, :mod:`~performers.bench.text`)."""

from __future__ import annotations

import argparse
import time

from performers.bench.attention_sweep import BASELINE_VARIANTS, KERNEL_SWEEP_VARIANTS
from performers.bench.baselines import baselines
from performers.bench.kernel_sweep import kernel_sweep
from performers.bench.paper import FAVOR_DEFAULTS, paper_training
from performers.bench.paper_tasks import ModelSize, TaskSpec, variant_names
from performers.bench.pixels import pixel_prediction
from performers.bench.text import text_model
from performers.cli.common import register
from performers.cli.favor_options import add_favor_options
from performers.cli.options import set_threads

SWEEP_HELP = "the paper's kernel sweep (Appendix D.3) on the protein MLM and the character LM, several seeds"
BASELINES_HELP = "exact, local, Linear Transformer, FAVOR+ and FAVOR++: equal steps and equal wall-clock"
PIXELS_HELP = "autoregressive MNIST: bits/dim, time per step, memory and sampled images per attention"
TEXT_HELP = "character-level LM on Tiny Shakespeare at contexts 256 and 2048: bits/char, tokens/s, samples"


def _common(
    parser: argparse.ArgumentParser, *, steps: int, out: str, variants, batch: int, lr: float
) -> None:
    d = ModelSize()
    model = parser.add_argument_group("model (shared by every attention)")
    model.add_argument("--d-model", type=int, default=d.d_model, help=f"model width (default {d.d_model})")
    model.add_argument("--layers", type=int, default=d.num_layers, help=f"blocks (default {d.num_layers})")
    model.add_argument("--heads", type=int, default=d.num_heads, help=f"heads (default {d.num_heads})")
    model.add_argument("--d-ff", type=int, default=d.d_ff, help=f"feed-forward width (default {d.d_ff})")
    model.add_argument(
        "--window", type=int, default=d.window, help=f"local attention window (default {d.window})"
    )
    model.add_argument("--dropout", type=float, default=d.dropout, help=f"dropout (default {d.dropout})")
    add_favor_options(parser, FAVOR_DEFAULTS, only=("num_features",))
    run = parser.add_argument_group("training")
    run.add_argument(
        "--variants",
        nargs="+",
        choices=variant_names(),
        default=list(variants),
        metavar="VARIANT",
        help=f"attentions to compare (default: {' '.join(variants)}; known: {' '.join(variant_names())})",
    )
    run.add_argument("--steps", type=int, default=steps, help=f"optimizer steps per run (default {steps})")
    run.add_argument("--batch-size", type=int, default=batch, help=f"sequences per step (default {batch})")
    run.add_argument("--lr", type=float, default=lr, help=f"peak AdamW learning rate (default {lr:g})")
    run.add_argument("--warmup", type=int, default=20, help="linear warm-up steps (default 20)")
    run.add_argument("--eval-every", type=int, default=50, help="validation every N steps (default 50)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", default=out, help=f"output directory (default {out})")
    parser.add_argument("--config", default=None, help="JSON file of option values (command line wins)")


def _add_tasks(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=["proteins", "text"],
        default=["proteins", "text"],
        help="tasks (default both)",
    )


def add_parsers(subparsers) -> None:
    sweep = subparsers.add_parser("kernel-sweep", help=SWEEP_HELP, description=SWEEP_HELP)
    _common(sweep, steps=200, out="runs/kernel-sweep", variants=KERNEL_SWEEP_VARIANTS, batch=8, lr=1e-3)
    _add_tasks(sweep)
    sweep.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    sweep.add_argument("--max-length", type=int, default=256, help="protein crop / text window (default 256)")
    sweep.add_argument("--eval-limit", type=int, default=8, help="validation batches/windows during training")
    sweep.add_argument(
        "--final-limit", type=int, default=None, help="test proteins / validation windows (all)"
    )
    sweep.add_argument("--train-limit", type=int, default=None, help="training proteins (default all)")
    register(sweep, run_sweep)

    base = subparsers.add_parser("baselines", help=BASELINES_HELP, description=BASELINES_HELP)
    _common(base, steps=200, out="runs/baselines", variants=BASELINE_VARIANTS, batch=8, lr=1e-3)
    _add_tasks(base)
    base.add_argument("--seconds", type=float, default=60.0, help="wall-clock budget per run (default 60)")
    base.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default 0)")
    base.add_argument(
        "--max-length", type=int, default=1024, help="protein crop / text window (default 1024)"
    )
    base.add_argument("--eval-limit", type=int, default=8, help="validation batches/windows during training")
    base.add_argument(
        "--final-limit", type=int, default=None, help="test proteins / validation windows (all)"
    )
    base.add_argument("--train-limit", type=int, default=None, help="training proteins (default all)")
    base.add_argument("--probe-steps", type=int, default=6, help="steps of the step-time probe (default 6)")
    register(base, run_baselines)

    pixels = subparsers.add_parser("pixels", help=PIXELS_HELP, description=PIXELS_HELP)
    _common(
        pixels,
        steps=300,
        out="runs/pixels",
        variants=("exact", "favor-softmax", "linear", "local"),
        batch=16,
        lr=2e-3,
    )
    pixels.add_argument(
        "--seconds", type=float, default=None, help="equal wall-clock budget per model instead"
    )
    pixels.add_argument("--samples", type=int, default=16, help="images sampled per model (default 16)")
    pixels.add_argument(
        "--eval-images", type=int, default=100, help="test images for the curves (default 100)"
    )
    pixels.add_argument(
        "--test-images", type=int, default=None, help="test images reported (default all 1,000)"
    )
    pixels.add_argument("--train-images", type=int, default=None, help="training images (default all 9,000)")
    pixels.add_argument(
        "--seed", type=int, default=0, help="seed (weights, data order, projections, sampling)"
    )
    register(pixels, run_pixels)

    text = subparsers.add_parser("text", help=TEXT_HELP, description=TEXT_HELP)
    _common(text, steps=300, out="runs/text", variants=BASELINE_VARIANTS, batch=8, lr=2e-3)
    text.add_argument(
        "--contexts", type=int, nargs="+", default=[256, 2048], help="contexts (default 256 2048)"
    )
    text.add_argument("--seconds", type=float, default=None, help="equal wall-clock budget per model instead")
    text.add_argument(
        "--tokens-per-step",
        type=int,
        default=None,
        help="batch = this // context at every context (equal tokens per step); default: --batch-size",
    )
    text.add_argument("--eval-windows", type=int, default=16, help="validation windows for the curves (16)")
    text.add_argument("--final-windows", type=int, default=None, help="validation windows reported (all)")
    text.add_argument("--sample-length", type=int, default=300, help="characters sampled per model (300)")
    text.add_argument("--prompt", default="ROMEO:", help="the samples' prompt (default ROMEO:)")
    text.add_argument("--seed", type=int, default=0, help="seed (weights, data order, projections, sampling)")
    register(text, run_text)


def _size(args: argparse.Namespace) -> ModelSize:
    return ModelSize(
        d_model=args.d_model,
        num_layers=args.layers,
        num_heads=args.heads,
        d_ff=args.d_ff,
        num_features=args.num_features,
        window=args.window,
        dropout=args.dropout,
    )


def _training(args: argparse.Namespace):
    return paper_training(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup=args.warmup,
        eval_every=args.eval_every,
        seed=getattr(args, "seed", 0),
    )


def _tasks(args: argparse.Namespace) -> tuple[TaskSpec, ...]:
    return tuple(
        TaskSpec(
            name,
            max_length=args.max_length,
            eval_limit=args.eval_limit,
            final_limit=args.final_limit,
            train_limit=args.train_limit if name == "proteins" else None,
        )
        for name in args.tasks
    )


def _finish(args: argparse.Namespace, report: str, written: str, start: float) -> int:
    print(report)
    print(f"wrote {args.out}/{written} in {time.perf_counter() - start:.0f}s")
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    set_threads(args)
    start = time.perf_counter()
    report = kernel_sweep(
        _tasks(args),
        _size(args),
        _training(args),
        out_dir=args.out,
        variants=tuple(args.variants),
        seeds=tuple(args.seeds),
    )
    return _finish(args, report, "kernel_sweep.md, kernel_sweep.json, kernel_sweep_*.png", start)


def run_baselines(args: argparse.Namespace) -> int:
    set_threads(args)
    start = time.perf_counter()
    report = baselines(
        _tasks(args),
        _size(args),
        _training(args),
        out_dir=args.out,
        seconds=args.seconds,
        variants=tuple(args.variants),
        seeds=tuple(args.seeds),
        probe_steps=args.probe_steps,
    )
    return _finish(args, report, "baselines.md, baselines.json, baselines_*.png", start)


def run_pixels(args: argparse.Namespace) -> int:
    set_threads(args)
    start = time.perf_counter()
    report = pixel_prediction(
        _size(args),
        _training(args),
        out_dir=args.out,
        variants=tuple(args.variants),
        seconds=args.seconds,
        samples=args.samples,
        eval_images=args.eval_images,
        test_images=args.test_images,
        train_images=args.train_images,
        seed=args.seed,
    )
    return _finish(args, report, "pixels.md, pixels.json, pixels.png, pixels_curves.png", start)


def run_text(args: argparse.Namespace) -> int:
    set_threads(args)
    start = time.perf_counter()
    report = text_model(
        _size(args),
        _training(args),
        out_dir=args.out,
        contexts=tuple(args.contexts),
        variants=tuple(args.variants),
        seconds=args.seconds,
        eval_windows=args.eval_windows,
        final_windows=args.final_windows,
        sample_length=args.sample_length,
        prompt=args.prompt,
        seed=args.seed,
        tokens_per_step=args.tokens_per_step,
    )
    return _finish(args, report, "text.md, text.json, text_*.png", start)
