"""``performers bench proteins-table``: the paper's Table 2 on this machine. For the causal (UNI)
and the masked (BID) task, an exact-softmax Transformer, a Performer with FAVOR+ softmax features
and a Performer with ReLU (generalized) features are trained — same architecture, initial
weights, data order, masks and steps — and their test accuracy and perplexity are reported next
to the empirical (unigram) baseline. Writes ``table2.md``/``.json`` and learning curves.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from performers.bench.protein_report import model_sizes, percent
from performers.bench.results import write_results
from performers.jobs.proteins import (
    TABLE2_VARIANTS,
    Variant,
    plot_learning_curves,
    train_variants,
    unigram_baseline,
)
from performers.models import PerformerConfig
from performers.training import TrainingConfig

__all__ = ["TASK_NAMES", "table2"]

TASK_NAMES = {"clm": "UNI (causal)", "mlm": "BID (masked)"}


def table2(
    model_config: PerformerConfig,
    training: TrainingConfig,
    *,
    out_dir: str | Path,
    tasks: tuple[str, ...] = ("clm", "mlm"),
    variants: tuple[Variant, ...] = TABLE2_VARIANTS,
    corpus: str | Path | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> str:
    """Train every variant on every task; write ``table2.md``/``.json``/learning curves."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, record = [], {"model": model_config.to_dict(), "training": asdict(training), "tasks": {}}
    for task in tasks:
        config = replace(training, task=task)
        results = train_variants(
            variants,
            model_config,
            config,
            out_dir=out_dir / task,
            corpus=corpus,
            train_limit=train_limit,
            test_limit=test_limit,
        )
        base = unigram_baseline(corpus, train_limit, test_limit)
        plot_learning_curves(
            {v.name: out_dir / task / v.directory for v in variants}, out_dir / f"curves_{task}.png"
        )
        record["tasks"][task] = {"baseline": base, "runs": [asdict(r) for r in results]}
        rows.append(
            f"| {TASK_NAMES[task]} | empirical baseline (unigram) | {percent(base['accuracy'])} "
            f"| {base['perplexity']:.2f} | — |"
        )
        for r in results:
            rows.append(
                f"| {TASK_NAMES[task]} | {r.name} | {percent(r.test['accuracy'])} "
                f"| {r.test['perplexity']:.2f} | {r.tokens_per_second:,.0f} |"
            )
    lines = [
        f"Test split; {training.max_steps} steps of batch {training.batch_size}, L = {training.max_length}; "
        f"{model_sizes(model_config)} features. Accuracy over masked residues (BID, 15 %) or all next "
        "tokens (UNI).",
        "",
        "| model type | model | accuracy (%) | perplexity | train tokens/s |",
        "|---|---|---:|---:|---:|",
        *rows,
    ]
    report = "\n".join(lines) + "\n"
    write_results(out_dir / "table2.json", record, report)
    return report
