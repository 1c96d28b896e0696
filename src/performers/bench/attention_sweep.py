"""Attention variants trained side by side on one task: the kernel sweep of the paper's Appendix
D.3 (``performers bench kernel-sweep``) and the efficient-attention baselines
(``performers bench baselines``), on the tasks of :mod:`performers.bench.paper_tasks`.

For every seed, every variant starts from the same initial weights (``torch.manual_seed(seed)``
before the model is built; the exact, local and FAVOR models have the same parameters) and
sees the same examples in the same order. A run records its learning curve, its speed (steps/s
and tokens/s of training steps only, evaluation excluded), the growth of the process's peak
memory (the growth of the process's peak resident set from before the run loads its data: data,
model, optimizer and training, whose evaluation batches are no larger than its training
batches), the final evaluation, and its stability (:func:`stability`): non-finite losses or
gradient norms, gradient-norm spikes (a step whose norm exceeds ``SPIKE_FACTOR`` × the median of
the ``SPIKE_WINDOW`` steps before it), and divergence (any non-finite value, or a final loss
above the first). A run that raises is recorded as failed with the error, never dropped.

Budgets: equal steps (every variant ``max_steps``), or equal wall-clock: a probe of
``probe_steps`` steps measures each variant's median step time (first step excluded), and the
variant then trains ``seconds / step_time`` steps (its learning-rate schedule spans them).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import statistics
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from performers.bench.paper_tasks import ModelSize, TaskSpec, task_model_config
from performers.models import build_model
from performers.training import Trainer, TrainingConfig
from performers.utils import peak_rss_reset, rss_kib

__all__ = [
    "BASELINE_VARIANTS",
    "KERNEL_SWEEP_VARIANTS",
    "SweepRun",
    "compare_attention",
    "read_curve",
    "stability",
    "summarize_runs",
    "train_run",
]

KERNEL_SWEEP_VARIANTS = (
    "exact",
    "favor-softmax",
    "favor++",
    "favor-relu",
    "favor-abs",
    "favor-exp",
    "favor-elu",
    "favor-sigmoid",
    "favor-gelu",
    "favor-tanh",
    "favor-cos",
    "favor-identity",
)
BASELINE_VARIANTS = ("exact", "local", "linear", "favor-softmax", "favor++")
SPIKE_FACTOR = 10.0
SPIKE_WINDOW = 20


@dataclass
class SweepRun:
    task: str
    variant: str
    seed: int
    budget: str  # "steps" or "wall-clock"
    steps: int
    train_seconds: float  # in training steps (no evaluation, no checkpoints)
    steps_per_second: float
    tokens_per_second: float
    peak_extra_mib: float
    final: dict  # the task's final evaluation ({} when the run failed or diverged to NaN)
    stability: dict
    directory: str
    error: str | None = None
    extra: dict = field(default_factory=dict)


def read_curve(directory: str | Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (one per step)."""
    path = Path(directory) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stability(records: list[dict]) -> dict:
    """Non-finite steps, gradient-norm spikes, the largest norm and divergence of one run."""
    losses = [float(r["loss"]) for r in records]
    norms = [float(r["grad_norm"]) for r in records if "grad_norm" in r]
    nonfinite = sum(
        1 for r in records if not (math.isfinite(r["loss"]) and math.isfinite(r.get("grad_norm", 0.0)))
    )
    spikes = 0
    for i in range(5, len(norms)):
        earlier = [n for n in norms[max(0, i - SPIKE_WINDOW) : i] if math.isfinite(n)]
        if earlier and math.isfinite(norms[i]) and norms[i] > SPIKE_FACTOR * statistics.median(earlier):
            spikes += 1
    tail = max(1, len(losses) // 10)
    finite_norms = [n for n in norms if math.isfinite(n)]
    diverged = nonfinite > 0 or (
        len(losses) > 1 and statistics.fmean(losses[-tail:]) > statistics.fmean(losses[:tail])
    )
    return {
        "nonfinite_steps": nonfinite,
        "grad_norm_spikes": spikes,
        "max_grad_norm": max(finite_norms) if finite_norms else math.nan,
        "diverged": bool(diverged),
    }


def train_run(
    task: TaskSpec,
    variant: str,
    size: ModelSize,
    training: TrainingConfig,
    out_dir: str | Path,
    *,
    budget: str = "steps",
    save: bool = False,
    log=print,
) -> SweepRun:
    """Train ``variant`` on ``task`` with ``training`` (its seed also seeds the projections) into
    ``out_dir`` and evaluate it; ``save`` keeps the model in ``out_dir/final``."""
    out_dir = Path(out_dir)
    config = task_model_config(task.name, size, variant, max_length=task.max_length)
    config = replace(config, favor=replace(config.favor, seed=training.seed))
    error, final, trainer, peak, start_rss = None, {}, None, None, None
    try:
        # The peak's growth from here: the run's data, model, optimizer and training.
        start_rss = peak_rss_reset()
        built = task.build(training)
        torch.manual_seed(training.seed)  # the same initial weights for every variant
        model = build_model(config, built.objective)
        trainer = Trainer(
            model,
            built.examples,
            training,
            out_dir,
            evaluate=built.evaluate,
            log=lambda s: log(f"[{variant}] {s}"),
        )
        trainer.fit(overwrite=True)
        peak = rss_kib("VmHWM")  # training (and its evaluations, batches no larger) only
        records = read_curve(out_dir)
        if records and math.isfinite(records[-1]["loss"]) and budget != "probe":
            final = built.final_evaluate(model)  # a probe only times steps: no test data
        if save:
            model.save_pretrained(out_dir / "final")
    except Exception as exc:  # recorded, not raised: one broken variant must not end a sweep
        error = f"{type(exc).__name__}: {exc}"
        log(f"[{variant}] failed: {error}\n{traceback.format_exc(limit=3)}")
    records = read_curve(out_dir)
    seconds = trainer.train_seconds if trainer is not None else 0.0
    # The learning curve for the JSON report: every evaluation, and the loss at <= 100 steps.
    every = max(1, len(records) // 100)
    curve = [
        {k: v for k, v in r.items() if k in ("step", "loss", "grad_norm") or k.startswith("valid_")}
        for i, r in enumerate(records)
        if i % every == 0 or i == len(records) - 1 or any(k.startswith("valid_") for k in r)
    ]
    tokens = trainer.tokens_seen if trainer is not None else 0
    return SweepRun(
        task=task.name,
        variant=variant,
        seed=training.seed,
        budget=budget,
        steps=len(records),
        train_seconds=seconds,
        steps_per_second=len(records) / seconds if seconds else 0.0,
        tokens_per_second=tokens / seconds if seconds else 0.0,
        peak_extra_mib=math.nan
        if start_rss is None
        else ((rss_kib("VmHWM") if peak is None else peak) - start_rss) / 1024,
        final=final,
        # A run that failed before its first step did not diverge: it is counted as failed.
        stability=stability(records) if records else {"diverged": None, "nonfinite_steps": 0},
        directory=str(out_dir),
        error=error,
        extra={"curve": curve},
    )


def _train_in_child(kwargs: dict) -> SweepRun:
    torch.set_num_threads(kwargs.pop("threads"))
    return train_run(**kwargs, log=print)


def _run(isolate: bool, log, **kwargs) -> SweepRun:
    """:func:`train_run` here, or in a fresh spawned process (``isolate``: its peak memory and
    speed then owe nothing to the runs before it; the allocator keeps freed pages in-process)."""
    if not isolate:
        return train_run(**kwargs, log=log)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_train_in_child, {**kwargs, "threads": torch.get_num_threads()}).result()


def _probe_step_seconds(
    task: TaskSpec,
    variant: str,
    size: ModelSize,
    training: TrainingConfig,
    out_dir: Path,
    probe_steps: int,
    isolate: bool,
    log,
) -> float:
    probe = replace(training, max_steps=probe_steps, eval_every=10**9, checkpoint_every=10**9, warmup_steps=1)
    _run(isolate, log, task=task, variant=variant, size=size, training=probe, out_dir=out_dir, budget="probe")
    times = [r["step_seconds"] for r in read_curve(out_dir)[1:]]
    return statistics.median(times) if times else math.inf


def compare_attention(
    task: TaskSpec,
    variants: tuple[str, ...],
    size: ModelSize,
    training: TrainingConfig,
    *,
    out_dir: str | Path,
    seeds: tuple[int, ...] = (0, 1, 2),
    seconds: float | None = None,
    probe_steps: int = 6,
    save: bool = False,
    isolate: bool = False,
    log=print,
) -> list[SweepRun]:
    """Train every variant for every seed (seeds outermost, so a change of the machine's load
    hits all variants alike); ``seconds``: equal wall-clock budgets instead of equal steps;
    ``isolate``: every run in a fresh process (needed for its peak memory). Runs go to
    ``out_dir/<budget>/<variant>/seed<k>``."""
    out_dir = Path(out_dir)
    budget = "steps" if seconds is None else "wall-clock"
    steps = {}
    if seconds is not None:
        for variant in variants:
            step = _probe_step_seconds(
                task, variant, size, training, out_dir / "probe" / variant, probe_steps, isolate, log
            )
            steps[variant] = max(1, int(seconds / step)) if math.isfinite(step) else 1
            log(f"[{variant}] {step:.3f} s/step → {steps[variant]} steps in {seconds:g} s")
    runs = []
    for seed in seeds:
        for variant in variants:
            config = replace(training, seed=seed)
            if seconds is not None:
                config = replace(
                    config, max_steps=steps[variant], warmup_steps=min(config.warmup_steps, steps[variant])
                )
            runs.append(
                _run(
                    isolate,
                    log,
                    task=task,
                    variant=variant,
                    size=size,
                    training=config,
                    out_dir=out_dir / budget / variant / f"seed{seed}",
                    budget=budget,
                    save=save,
                )
            )
    return runs


def summarize_runs(runs: list[SweepRun], metric: str) -> list[dict]:
    """One row per (task, budget, variant): the metric's mean and sd over seeds that produced it,
    mean steps, steps/s, tokens/s, peak memory, and the stability counts over seeds."""
    rows = []
    keys = list(dict.fromkeys((r.task, r.budget, r.variant) for r in runs))
    for task, budget, variant in keys:
        mine = [r for r in runs if (r.task, r.budget, r.variant) == (task, budget, variant)]
        values = [r.final[metric] for r in mine if metric in r.final and math.isfinite(r.final[metric])]
        rows.append(
            {
                "task": task,
                "budget": budget,
                "variant": variant,
                "seeds": len(mine),
                "metric": metric,
                "mean": statistics.fmean(values) if values else math.nan,
                "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                "evaluated": len(values),
                "steps": statistics.fmean(r.steps for r in mine),
                "steps_per_second": statistics.fmean(r.steps_per_second for r in mine),
                "tokens_per_second": statistics.fmean(r.tokens_per_second for r in mine),
                "peak_extra_mib": max(r.peak_extra_mib for r in mine),
                "diverged": sum(bool(r.stability.get("diverged")) for r in mine),
                "nonfinite_runs": sum(r.stability.get("nonfinite_steps", 0) > 0 for r in mine),
                "grad_norm_spikes": sum(r.stability.get("grad_norm_spikes", 0) for r in mine),
                "failed": sum(r.error is not None for r in mine),
            }
        )
    return rows
