"""What the paper's benchmarks beyond proteins share (``performers bench kernel-sweep``,
``baselines``, ``pixels``, ``text``: :mod:`performers.bench.kernel_sweep`,
:mod:`~performers.bench.baselines`, :mod:`~performers.bench.pixels`, :mod:`~performers.bench.text`):
the setting line of a report, one task's section (summary table, curves, failures), the
training configuration of a run (:func:`paper_training`) and its optimization fields, the FAVOR
defaults of their models (:data:`FAVOR_DEFAULTS`), and the writing of ``<name>.md``/``.json``
(through :func:`performers.bench.results.write_results`) into ``out_dir``.
"""

from __future__ import annotations

import platform
from dataclasses import asdict
from pathlib import Path

import torch

from performers.bench.attention_sweep import SweepRun, summarize_runs
from performers.bench.paper_report import plot_curves, summary_table
from performers.bench.paper_tasks import ModelSize, TaskSpec
from performers.bench.results import write_results
from performers.layers import FavorConfig
from performers.training import TrainingConfig

__all__ = [
    "FAVOR_DEFAULTS",
    "optimization_options",
    "paper_training",
    "setting",
    "task_section",
    "write_report",
]

FAVOR_DEFAULTS = FavorConfig(num_features=ModelSize().num_features)
"""The FAVOR options of the paper benchmarks' models by default (M of :class:`ModelSize`)."""


def paper_training(
    *, steps: int, batch_size: int, learning_rate: float, warmup: int, eval_every: int, seed: int = 0
) -> TrainingConfig:
    """The training of one benchmark run: ``warmup`` steps (at most ``steps``), one checkpoint at
    the end, no TensorBoard."""
    return TrainingConfig(
        max_steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_steps=min(warmup, steps),
        eval_every=eval_every,
        checkpoint_every=steps,
        seed=seed,
        tensorboard=False,
    )


def setting(size: ModelSize, training: TrainingConfig, *, batch: str | None = None) -> str:
    """The model and optimization setting every variant of a report shares, in words."""
    batch = str(training.batch_size) if batch is None else batch
    return (
        f"d_model {size.d_model}, {size.num_layers} layers, {size.num_heads} heads, d_ff {size.d_ff}, "
        f"M = {size.num_features} features, local window {size.window}, dropout {size.dropout}; "
        f"batch {batch}, AdamW lr {training.learning_rate:g} ({training.warmup_steps} warm-up "
        f"steps, {training.schedule}), grad clip {training.grad_clip}; "
        f"{torch.get_num_threads()} threads on {platform.processor() or platform.machine()}"
    )


def write_report(out_dir: Path, name: str, lines: list[str], payload: dict) -> str:
    """Write ``<name>.md`` (``lines``) and ``<name>.json`` (``payload``) into ``out_dir``; return the
    markdown."""
    report = "\n".join(lines) + "\n"
    write_results(out_dir / f"{name}.json", payload, report)
    return report


def task_section(
    task: TaskSpec, runs: list[SweepRun], out_dir: Path, stem: str, *, memory: bool = False
) -> tuple[list[str], list[dict]]:
    """The markdown of one task (summary table, curve plots, failed runs) and its summary rows."""
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


def optimization_options(training: TrainingConfig) -> dict:
    """The optimization fields of ``training`` (the task sets objective and length)."""
    options = asdict(training)
    for key in ("task", "max_length"):
        options.pop(key)
    return options
