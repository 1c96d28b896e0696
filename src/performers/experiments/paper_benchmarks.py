"""The paper's evidence beyond proteins, as functions the CLI calls (``performers bench ...``):

* :func:`kernel_sweep` — Appendix D.3's kernels (and FAVOR+, FAVOR++, exact) on the protein MLM
  and the character LM, several seeds: metric, speed, stability, curves;
* :func:`baselines` — exact, local (sliding window), Linear Transformer, FAVOR+ and FAVOR++ on the
  same tasks with equal steps and with equal wall-clock budgets;
* :func:`pixel_prediction` — autoregressive MNIST: bits/dim, time per step, memory, and 16
  sampled images per model (FAVOR models sample through their O(1) recurrent state; exact and
  local through a key/value cache) with the sampling time;
* :func:`text_model` — the character LM at several contexts: bits/char, tokens/s and samples.

Each writes ``<name>.md`` and ``<name>.json`` (every run with its curve directory, stability and
timing) and its plots into ``out_dir``, and returns the markdown.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch

from performers.experiments.attention_sweep import (
    BASELINE_VARIANTS,
    KERNEL_SWEEP_VARIANTS,
    SweepRun,
    compare_attention,
    summarize_runs,
)
from performers.experiments.paper_report import plot_curves, plot_image_grid, summary_table
from performers.experiments.paper_tasks import ModelSize, TaskSpec
from performers.images import BOS_ID, PIXEL_LEVELS
from performers.models import from_pretrained
from performers.text import CharVocabulary, load_tiny_shakespeare
from performers.training import TrainingConfig

__all__ = ["baselines", "kernel_sweep", "pixel_prediction", "sample_pixels", "sample_text", "text_model"]


def _setting(size: ModelSize, training: TrainingConfig, *, batch: str | None = None) -> str:
    batch = str(training.batch_size) if batch is None else batch
    return (
        f"d_model {size.d_model}, {size.num_layers} layers, {size.num_heads} heads, d_ff {size.d_ff}, "
        f"M = {size.num_features} features, local window {size.window}, dropout {size.dropout}; "
        f"batch {batch}, AdamW lr {training.learning_rate:g} ({training.warmup_steps} warm-up "
        f"steps, {training.schedule}), grad clip {training.grad_clip}; "
        f"{torch.get_num_threads()} threads on {platform.processor() or platform.machine()}"
    )


def _write(out_dir: Path, name: str, lines: list[str], payload: dict) -> str:
    report = "\n".join(lines) + "\n"
    (out_dir / f"{name}.md").write_text(report)
    (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str))
    return report


def _task_section(
    task: TaskSpec, runs: list[SweepRun], out_dir: Path, stem: str, *, memory: bool = False
) -> tuple[list[str], list[dict]]:
    metric = task.metric[0]
    rows = summarize_runs(runs, metric)
    lines = [f"### {task.name}", ""]
    lines += summary_table(rows, memory=memory)
    for budget in dict.fromkeys(r.budget for r in runs):
        plot = plot_curves(
            [r for r in runs if r.budget == budget],
            metric,
            out_dir / f"{stem}_{task.name}_{budget}.png",
            f"{task.name} ({budget})",
        )
        if plot is not None:
            lines += ["", f"![{task.name} {budget}]({plot.name})"]
    failures = [r for r in runs if r.error]
    for r in failures:
        lines.append(f"- {r.variant} seed {r.seed} ({r.budget}) failed: `{r.error}`")
    return [*lines, ""], rows


def kernel_sweep(
    tasks: tuple[TaskSpec, ...],
    size: ModelSize,
    training: TrainingConfig,
    *,
    out_dir: str | Path,
    variants: tuple[str, ...] = KERNEL_SWEEP_VARIANTS,
    seeds: tuple[int, ...] = (0, 1, 2),
    log=print,
) -> str:
    """Every variant × seed on every task with equal steps; writes ``kernel_sweep.md/.json`` and
    ``kernel_sweep_<task>_steps.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "## Kernel sweep",
        "",
        f"{training.max_steps} steps per run, seeds {list(seeds)}; same initial weights and data order "
        "for every attention of a seed. " + _setting(size, training) + ".",
        "",
    ]
    payload: dict = {"size": asdict(size), "training": asdict(training), "tasks": {}}
    for task in tasks:
        task_training = task.training_config(**_options(training))
        runs = compare_attention(
            task, variants, size, task_training, out_dir=out_dir / task.name, seeds=seeds, log=log
        )
        section, rows = _task_section(task, runs, out_dir, "kernel_sweep")
        lines += section
        payload["tasks"][task.name] = {"spec": asdict(task), "rows": rows, "runs": [asdict(r) for r in runs]}
    return _write(out_dir, "kernel_sweep", lines, payload)


def _options(training: TrainingConfig) -> dict:
    """The optimization fields of ``training`` (the task sets objective and length)."""
    options = asdict(training)
    for key in ("task", "max_length"):
        options.pop(key)
    return options


def baselines(
    tasks: tuple[TaskSpec, ...],
    size: ModelSize,
    training: TrainingConfig,
    *,
    out_dir: str | Path,
    seconds: float,
    variants: tuple[str, ...] = BASELINE_VARIANTS,
    seeds: tuple[int, ...] = (0,),
    probe_steps: int = 6,
    log=print,
) -> str:
    """Every variant with equal steps (``training.max_steps``) and with an equal wall-clock budget
    of ``seconds`` of training steps each; writes ``baselines.md/.json`` and curves."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "## Efficient-attention baselines",
        "",
        f"Equal steps: {training.max_steps} steps each. Equal wall-clock: {seconds:g} s of training "
        f"steps each (steps = {seconds:g} s / the variant's median step time in a {probe_steps}-step "
        f"probe). Seeds {list(seeds)}. " + _setting(size, training) + ".",
        "",
    ]
    payload: dict = {"size": asdict(size), "training": asdict(training), "seconds": seconds, "tasks": {}}
    for task in tasks:
        task_training = task.training_config(**_options(training))
        runs = []
        for budget in (None, seconds):  # equal steps, then equal wall-clock
            runs += compare_attention(
                task,
                variants,
                size,
                task_training,
                out_dir=out_dir / task.name,
                seeds=seeds,
                seconds=budget,
                probe_steps=probe_steps,
                isolate=True,
                log=log,
            )
        section, rows = _task_section(task, runs, out_dir, "baselines", memory=True)
        lines += section
        payload["tasks"][task.name] = {"spec": asdict(task), "rows": rows, "runs": [asdict(r) for r in runs]}
    return _write(out_dir, "baselines", lines, payload)


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
    task_training = task.training_config(**_options(training))
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
        f"shipped 10,000 split 9,000/1,000); {budget}. " + _setting(size, training) + ".",
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
    return _write(out_dir, "pixels", lines, payload)


@torch.no_grad()
def sample_text(
    model, vocabulary: CharVocabulary, prompt: str, length: int, *, seed: int = 0
) -> tuple[str, float]:
    """``(text, seconds)``: ``length`` characters sampled at temperature 1 after ``prompt``."""
    ids = vocabulary.encode(prompt)[None]
    generator = torch.Generator().manual_seed(seed)
    began = time.perf_counter()
    out = model.generate(ids, max_new_tokens=length, do_sample=True, generator=generator)
    return vocabulary.decode(out[0, ids.shape[1] :]), time.perf_counter() - began


def text_model(
    size: ModelSize,
    training: TrainingConfig,
    *,
    out_dir: str | Path,
    contexts: tuple[int, ...] = (256, 2048),
    variants: tuple[str, ...] = BASELINE_VARIANTS,
    seconds: float | None = None,
    eval_windows: int = 16,
    final_windows: int | None = None,
    sample_length: int = 200,
    prompt: str = "ROMEO:",
    seed: int = 0,
    tokens_per_step: int | None = None,
    log=print,
) -> str:
    """The character LM on Tiny Shakespeare at each context: bits/char on the validation text,
    tokens/s, and a sample per model. ``tokens_per_step``: the batch at each context is this
    divided by the context (every context trains on as many characters); default
    ``training.batch_size``. Writes ``text.md/.json`` and curves per context."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocabulary = CharVocabulary.from_text(load_tiny_shakespeare()[0])
    budget = f"{seconds:g} s of training steps each" if seconds else f"{training.max_steps} steps each"
    lines = [
        "## Character-level text model (Tiny Shakespeare)",
        "",
        f"First 90 % of the characters train, last 10 % validate (bits/char over "
        f"{'all' if final_windows is None else final_windows} non-overlapping validation windows of the "
        f"context length); {budget}"
        + (
            ""
            if tokens_per_step is None
            else f", {tokens_per_step} characters per step (batch = that / context)"
        )
        + ". "
        + _setting(size, training, batch=None if tokens_per_step is None else "per context below")
        + ".",
        "",
    ]
    payload: dict = {"size": asdict(size), "training": asdict(training), "contexts": {}}
    for context in contexts:
        task = TaskSpec("text", max_length=context, eval_limit=eval_windows, final_limit=final_windows)
        batch = training.batch_size if tokens_per_step is None else max(1, tokens_per_step // context)
        task_training = task.training_config(**{**_options(training), "batch_size": batch})
        runs = compare_attention(
            task,
            variants,
            size,
            task_training,
            out_dir=out_dir / f"context{context}",
            seeds=(seed,),
            seconds=seconds,
            save=True,
            isolate=True,
            log=log,
        )
        samples = {}
        for run in runs:
            if run.error or not run.final:
                continue
            model = from_pretrained(Path(run.directory) / "final")
            text, took = sample_text(
                model, vocabulary, prompt, min(sample_length, context - len(prompt)), seed=seed
            )
            samples[run.variant] = {"text": text, "seconds": took}
            run.extra["sample"] = samples[run.variant]
        section, rows = _task_section(task, runs, out_dir, f"text_context{context}", memory=True)
        lines += [f"### context {context} (batch {batch})", "", *section[2:]]
        for variant, info in samples.items():
            lines += [
                f"**{variant}** (sampled in {info['seconds']:.1f} s):",
                "",
                "```",
                prompt + info["text"],
                "```",
                "",
            ]
        payload["contexts"][str(context)] = {"rows": rows, "runs": [asdict(r) for r in runs]}
    return _write(out_dir, "text", lines, payload)
