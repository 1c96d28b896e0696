"""``performers bench pixels``: autoregressive MNIST — bits/dim, time per step, memory, and
sampled images per model (FAVOR models sample through their O(1) recurrent state; exact and
local through a key/value cache) with the sampling time. Writes ``pixels.md``/``.json``,
``pixels.png`` and ``pixels_curves.png`` into ``out_dir``."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

from performers.bench.attention_sweep import compare_attention, summarize_runs
from performers.bench.paper import optimization_options, setting, write_report
from performers.bench.paper_report import plot_curves, plot_image_grid, summary_table
from performers.bench.paper_tasks import ModelSize, TaskSpec
from performers.images import BOS_ID, PIXEL_LEVELS
from performers.models import from_pretrained
from performers.training import TrainingConfig

__all__ = ["pixel_prediction", "sample_pixels"]


@torch.no_grad()
def sample_pixels(model, count: int, *, seed: int = 0) -> tuple[torch.Tensor, float]:
    """``(images (count, 28, 28) uint8, seconds)``: ``count`` images sampled pixel by pixel at
    temperature 1 from the model's distribution over the 256 levels — the one bits/dim scores
    (the start token is never sampled). FAVOR models continue their O(1) recurrent state; exact
    and local attention a key/value cache (local reads only its last ``window`` keys)."""
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        began = time.perf_counter()
        out = model(torch.full((count, 1), BOS_ID, dtype=torch.long), use_cache=True, logits_to_keep=1)
        pixels = []
        for position in range(28 * 28):
            probabilities = torch.softmax(out.logits[:, -1, :PIXEL_LEVELS].float(), dim=-1)
            token = torch.multinomial(probabilities, 1, generator=generator)
            pixels.append(token)
            if position < 28 * 28 - 1:
                out = model(token, past_key_values=out.past_key_values, use_cache=True, logits_to_keep=1)
        seconds = time.perf_counter() - began
    finally:
        model.train(was_training)
    return torch.cat(pixels, dim=1).to(torch.uint8).view(count, 28, 28), seconds


def pixel_prediction(
    size: ModelSize,
    training: TrainingConfig,
    *,
    out_dir: str | Path,
    variants: tuple[str, ...] = ("exact", "favor-softmax", "linear", "local"),
    seconds: float | None = None,
    samples: int = 16,
    eval_images: int = 100,
    test_images: int | None = None,
    train_images: int | None = None,
    seed: int = 0,
    log=print,
) -> str:
    """Autoregressive MNIST: train every variant (equal steps, or ``seconds`` of wall clock each),
    report test bits/dim, time per step, peak memory, and ``samples`` sampled images per model
    (``pixels.png``) with the time sampling took. Writes ``pixels.md/.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    task = TaskSpec("pixels", eval_limit=eval_images, final_limit=test_images, train_limit=train_images)
    task_training = task.training_config(**optimization_options(training))
    runs = compare_attention(
        task,
        variants,
        size,
        task_training,
        out_dir=out_dir,
        seeds=(seed,),
        seconds=seconds,
        save=True,
        isolate=True,
        log=log,
    )
    images, sampling = {}, {}
    for run in runs:
        if run.error or not run.final:
            continue
        model = from_pretrained(Path(run.directory) / "final")
        pictures, took = sample_pixels(model, samples, seed=seed)
        images[run.variant] = list(pictures)
        sampling[run.variant] = {"seconds": took}
        run.extra["sampling"] = sampling[run.variant]
    rows = summarize_runs(runs, "bits_per_dimension")
    budget = f"{seconds:g} s of training steps each" if seconds else f"{task_training.max_steps} steps each"
    lines = [
        "## Pixel prediction (autoregressive MNIST)",
        "",
        f"784 pixels per image, 256-way softmax; trained on {min(train_images or 9000, 9000):,} images, "
        f"bits/dim on {min(test_images or 1000, 1000):,} test images (a seeded permutation of the "
        f"shipped 10,000 split 9,000/1,000); {budget}. " + setting(size, training) + ".",
        "",
    ]
    lines += summary_table(rows, memory=True)
    lines += [
        "",
        f"| attention | sampling {samples} images (s) | per image (ms) |",
        "|---|---:|---:|",
    ]
    for variant, info in sampling.items():
        lines.append(f"| {variant} | {info['seconds']:.1f} | {1000 * info['seconds'] / samples:.0f} |")
    grid = plot_image_grid(images, out_dir / "pixels.png")
    if grid is not None:
        lines += ["", f"![samples]({grid.name})"]
    curves = plot_curves(runs, "bits_per_dimension", out_dir / "pixels_curves.png", "MNIST")
    if curves is not None:
        lines += ["", f"![curves]({curves.name})"]
    payload = {
        "size": asdict(size),
        "training": asdict(task_training),
        "seconds": seconds,
        "rows": rows,
        "runs": [asdict(r) for r in runs],
    }
    return write_report(out_dir, "pixels", lines, payload)
