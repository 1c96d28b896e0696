"""``performers bench proteins-long``: the concatenated long-sequence setting — tokens/s, peak
memory and accuracy in equal wall-clock time.

The model trains on proteins concatenated into windows of ``--length`` tokens. A short probe run
of each model measures its training tokens/s and peak memory; then each model trains for
``--minutes`` of *its own measured* step time (so the step counts, not the machine's load during
the long runs, fix the budget) and is evaluated on the concatenated test split. Writes
``long.md``/``.json`` and ``curves_long.png``.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, replace
from pathlib import Path

from performers.bench.protein_report import model_sizes, percent
from performers.bench.results import write_results
from performers.jobs.proteins import Variant, plot_learning_curves, train_variants, unigram_baseline
from performers.models import PerformerConfig
from performers.training import TrainingConfig

__all__ = ["long_context"]


def _probe(result_dir: Path) -> float:
    """Median seconds per training step of a probe run, its first (warm-up) step excluded."""
    records = [json.loads(line) for line in (result_dir / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_seconds"] for r in records[1:]] or [records[0]["step_seconds"]]
    return statistics.median(times)


def long_context(
    model_config: PerformerConfig,
    training: TrainingConfig,
    *,
    out_dir: str | Path,
    minutes: float,
    probe_steps: int = 4,
    variants: tuple[Variant, ...] = (
        Variant("Transformer (exact, SDPA)", "exact", attention="exact"),
        Variant("Performer (FAVOR+)", "favor"),
    ),
    corpus: str | Path | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> str:
    """Probe each variant's speed and memory, then train each for ``minutes`` of its own step
    time on concatenated windows; write ``long.md``/``.json`` and learning curves."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    training = replace(training, concatenate=True)
    probe_config = replace(
        training, max_steps=probe_steps, warmup_steps=1, eval_every=10**9, checkpoint_every=10**9
    )
    probes = train_variants(
        variants,
        model_config,
        probe_config,
        out_dir=out_dir / "probe",
        corpus=corpus,
        train_limit=train_limit,
        test_limit=test_limit,
        evaluate=False,
    )
    step_seconds = {v.name: _probe(out_dir / "probe" / v.directory) for v in variants}
    tokens_per_step = training.batch_size * training.accumulation * training.max_length
    budgeted = tuple(
        replace(v, max_steps=max(1, math.floor(minutes * 60 / step_seconds[v.name]))) for v in variants
    )
    results = train_variants(
        budgeted,
        model_config,
        training,
        out_dir=out_dir,
        corpus=corpus,
        train_limit=train_limit,
        test_limit=test_limit,
    )
    plot_learning_curves({v.name: out_dir / v.directory for v in variants}, out_dir / "curves_long.png")
    base = unigram_baseline(corpus, train_limit, test_limit)
    rows = []
    for v, probe, r in zip(budgeted, probes, results, strict=True):
        rows.append(
            f"| {v.name} | {step_seconds[v.name]:.2f} | {tokens_per_step / step_seconds[v.name]:,.0f} "
            f"| {probe.peak_extra_mib:,.0f} | {v.max_steps} | {percent(r.test['accuracy'])} "
            f"| {r.test['perplexity']:.2f} |"
        )
    exact, favor = (step_seconds[v.name] for v in variants[:2])
    lines = [
        f"{'Masked' if training.task == 'mlm' else 'Causal'} LM on proteins concatenated into windows of "
        f"L = {training.max_length} tokens, batch {training.batch_size}; {model_sizes(model_config)}. "
        f"Equal wall-clock budget: {minutes:g} min of each model's own probed step time.",
        "",
        "| model | s/step | train tokens/s | peak extra memory (MiB) | steps in budget | test accuracy (%) "
        "| test perplexity |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        f"| empirical baseline (unigram) | — | — | — | — | {percent(base['accuracy'])} "
        f"| {base['perplexity']:.2f} |",
        "",
        f"Speed-up of {variants[1].name} over {variants[0].name}: {exact / favor:.2f}× tokens/s.",
    ]
    report = "\n".join(lines) + "\n"
    record = {
        "model": model_config.to_dict(),
        "training": asdict(training),
        "minutes": minutes,
        "step_seconds": step_seconds,
        "probes": [asdict(p) for p in probes],
        "runs": [asdict(r) | {"steps": v.max_steps} for v, r in zip(budgeted, results, strict=True)],
        "baseline": base,
    }
    write_results(out_dir / "long.json", record, report)
    return report
