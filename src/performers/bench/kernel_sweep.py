"""``performers bench kernel-sweep``: the paper's Appendix D.3 kernels (and FAVOR+, FAVOR++,
exact) on the protein MLM and the character LM, several seeds: metric, speed, stability, curves.
Writes ``kernel_sweep.md``/``.json`` and ``kernel_sweep_<task>_steps.png`` into ``out_dir``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from performers.bench.attention_sweep import KERNEL_SWEEP_VARIANTS, compare_attention
from performers.bench.paper import optimization_options, setting, task_section, write_report
from performers.bench.paper_tasks import ModelSize, TaskSpec
from performers.training import TrainingConfig

__all__ = ["kernel_sweep"]


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
        "for every attention of a seed. " + setting(size, training) + ".",
        "",
    ]
    payload: dict = {"size": asdict(size), "training": asdict(training), "tasks": {}}
    for task in tasks:
        task_training = task.training_config(**optimization_options(training))
        runs = compare_attention(
            task, variants, size, task_training, out_dir=out_dir / task.name, seeds=seeds, log=log
        )
        section, rows = task_section(task, runs, out_dir, "kernel_sweep")
        lines += section
        payload["tasks"][task.name] = {"spec": asdict(task), "rows": rows, "runs": [asdict(r) for r in runs]}
    return write_report(out_dir, "kernel_sweep", lines, payload)
