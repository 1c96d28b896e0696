"""``performers bench baselines``: exact, local (sliding window), Linear Transformer, FAVOR+ and
FAVOR++ on the protein MLM and the character LM, with equal steps and with equal wall-clock
budgets. Writes ``baselines.md``/``.json`` and curves into ``out_dir``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from performers.bench.attention_sweep import BASELINE_VARIANTS, compare_attention
from performers.bench.paper import optimization_options, setting, task_section, write_report
from performers.bench.paper_tasks import ModelSize, TaskSpec
from performers.training import TrainingConfig

__all__ = ["baselines"]


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
        f"probe). Seeds {list(seeds)}. " + setting(size, training) + ".",
        "",
    ]
    payload: dict = {"size": asdict(size), "training": asdict(training), "seconds": seconds, "tasks": {}}
    for task in tasks:
        task_training = task.training_config(**optimization_options(training))
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
        section, rows = task_section(task, runs, out_dir, "baselines", memory=True)
        lines += section
        payload["tasks"][task.name] = {"spec": asdict(task), "rows": rows, "runs": [asdict(r) for r in runs]}
    return write_report(out_dir, "baselines", lines, payload)
