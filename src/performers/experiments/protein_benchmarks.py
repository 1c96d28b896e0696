"""The paper's protein experiments on this machine: Table 2 (UNI and BID at one length, equal
steps), the concatenated long-sequence setting (tokens/s, peak memory, accuracy in equal
wall-clock time) and backward compatibility (an exact-softmax model switched to FAVOR+).

``performers bench proteins-table`` trains, for the causal (UNI) and the masked (BID) task, an
exact-softmax Transformer, a Performer with FAVOR+ softmax features and a Performer with ReLU
(generalized) features — same architecture, initial weights, data order, masks and steps —
and reports test accuracy and perplexity next to the empirical (unigram) baseline.

``performers bench proteins-long`` trains on proteins concatenated into windows of
``--length`` tokens. A short probe run of each model measures its training tokens/s and peak
memory; then each model trains for ``--minutes`` of *its own measured* step time (so the step
counts, not the machine's load during the long runs, fix the budget) and is evaluated on the
concatenated test split.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, replace
from pathlib import Path

import torch

from performers.experiments.protein_evaluation import corpus_splits, protein_evaluator
from performers.experiments.proteins import (
    TABLE2_VARIANTS,
    Variant,
    load_trained,
    plot_learning_curves,
    protein_trainer,
    train_variants,
    unigram_baseline,
)
from performers.models import PerformerConfig
from performers.training import TrainingConfig

__all__ = ["backward_compatibility", "long_context", "table2"]

TASK_NAMES = {"clm": "UNI (causal)", "mlm": "BID (masked)"}


def _percent(x: float) -> str:
    return f"{100 * x:.2f}"


def _sizes(config: PerformerConfig) -> str:
    return (
        f"d_model {config.d_model}, {config.num_layers} layers, {config.num_heads} heads, "
        f"d_ff {config.d_ff}, M = {config.favor.num_features}"
    )


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
            f"| {TASK_NAMES[task]} | empirical baseline (unigram) | {_percent(base['accuracy'])} "
            f"| {base['perplexity']:.2f} | — |"
        )
        for r in results:
            rows.append(
                f"| {TASK_NAMES[task]} | {r.name} | {_percent(r.test['accuracy'])} "
                f"| {r.test['perplexity']:.2f} | {r.tokens_per_second:,.0f} |"
            )
    lines = [
        f"Test split; {training.max_steps} steps of batch {training.batch_size}, L = {training.max_length}; "
        f"{_sizes(model_config)} features. Accuracy over masked residues (BID, 15 %) or all next "
        "tokens (UNI).",
        "",
        "| model type | model | accuracy (%) | perplexity | train tokens/s |",
        "|---|---|---:|---:|---:|",
        *rows,
    ]
    report = "\n".join(lines) + "\n"
    (out_dir / "table2.md").write_text(report)
    (out_dir / "table2.json").write_text(json.dumps(record, indent=2))
    return report


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
            f"| {probe.peak_extra_mib:,.0f} | {v.max_steps} | {_percent(r.test['accuracy'])} "
            f"| {r.test['perplexity']:.2f} |"
        )
    exact, favor = (step_seconds[v.name] for v in variants[:2])
    lines = [
        f"{'Masked' if training.task == 'mlm' else 'Causal'} LM on proteins concatenated into windows of "
        f"L = {training.max_length} tokens, batch {training.batch_size}; {_sizes(model_config)}. "
        f"Equal wall-clock budget: {minutes:g} min of each model's own probed step time.",
        "",
        "| model | s/step | train tokens/s | peak extra memory (MiB) | steps in budget | test accuracy (%) "
        "| test perplexity |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        f"| empirical baseline (unigram) | — | — | — | — | {_percent(base['accuracy'])} "
        f"| {base['perplexity']:.2f} |",
        "",
        f"Speed-up of {variants[1].name} over {variants[0].name}: {exact / favor:.2f}× tokens/s.",
    ]
    report = "\n".join(lines) + "\n"
    (out_dir / "long.md").write_text(report)
    (out_dir / "long.json").write_text(
        json.dumps(
            {
                "model": model_config.to_dict(),
                "training": asdict(training),
                "minutes": minutes,
                "step_seconds": step_seconds,
                "probes": [asdict(p) for p in probes],
                "runs": [asdict(r) | {"steps": v.max_steps} for v, r in zip(budgeted, results, strict=True)],
                "baseline": base,
            },
            indent=2,
        )
    )
    return report


def backward_compatibility(
    exact_dir: str | Path,
    training: TrainingConfig,
    *,
    out_dir: str | Path,
    corpus: str | Path | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> str:
    """The paper's backward-compatibility experiment on our proteins.

    The exact-softmax model in ``exact_dir`` (a ``save_pretrained`` directory, or a run
    directory with ``final/``) is evaluated, switched to FAVOR+ with its weights unchanged,
    evaluated again, and fine-tuned for ``training.max_steps`` steps; the same architecture
    trained from scratch with FAVOR+ for the same steps, data and masks is the control.
    Validation accuracy is recorded every ``training.eval_every`` steps (and at step 0); test
    accuracy at the end. Writes ``backcompat.md``/``.json`` and ``backcompat.png``.
    """
    exact_dir, out_dir = Path(exact_dir), Path(out_dir)
    if (exact_dir / "final").is_dir():
        exact_dir = exact_dir / "final"
    out_dir.mkdir(parents=True, exist_ok=True)
    exact, tokenizer = load_trained(exact_dir, attention="exact")
    train, valid, test = corpus_splits(corpus, training, train_limit, test_limit)

    def trainer_for(model, name: str):
        return protein_trainer(model, tokenizer, train, valid, training, out_dir / name, log=lambda _: None)

    reference = trainer_for(exact, "exact")
    exact_valid = reference.evaluate(exact)["accuracy"]
    exact_test = protein_evaluator(tokenizer, test, training)(exact)

    curves: dict[str, list[tuple[int, float]]] = {}
    tests: dict[str, dict] = {}
    for name in ("converted", "scratch"):
        if name == "converted":
            model, _ = load_trained(exact_dir, attention="favor")
            model.train()
        else:
            torch.manual_seed(training.seed)
            model = type(exact)(replace(exact.config, attention="favor"))
        trainer = trainer_for(model, name)
        curve = [(0, trainer.evaluate(model)["accuracy"])]
        if name == "converted":
            tests["converted, before fine-tuning"] = protein_evaluator(tokenizer, test, training)(model)
        trainer.fit()
        records = [json.loads(line) for line in (out_dir / name / "metrics.jsonl").read_text().splitlines()]
        curve += [(r["step"], r["valid_accuracy"]) for r in records if "valid_accuracy" in r]
        curves[name] = curve
        tests[name] = protein_evaluator(tokenizer, test, training)(model)

    _plot_recovery(curves, exact_valid, out_dir / "backcompat.png")
    steps = training.max_steps
    lines = [
        f"Exact-softmax {'masked' if training.task == 'mlm' else 'causal'} LM from `{exact_dir}` "
        f"converted to FAVOR+ (M = {exact.config.favor.num_features}, "
        f"kernel {exact.config.favor.kernel}) and fine-tuned for {steps} steps (batch {training.batch_size}, "
        f"L = {training.max_length}, lr {training.learning_rate:g}), against the same architecture trained "
        f"from scratch with FAVOR+ for the same {steps} steps on the same batches.",
        "",
        "| model | test accuracy (%) | test perplexity |",
        "|---|---:|---:|",
        f"| exact softmax (original) | {_percent(exact_test['accuracy'])} | {exact_test['perplexity']:.2f} |",
    ]
    labels = {
        "converted, before fine-tuning": "FAVOR+, converted, before fine-tuning",
        "converted": f"FAVOR+, converted, after {steps} fine-tuning steps",
        "scratch": f"FAVOR+, from scratch, {steps} steps",
    }
    for key, label in labels.items():
        lines.append(f"| {label} | {_percent(tests[key]['accuracy'])} | {tests[key]['perplexity']:.2f} |")
    lines += [
        "",
        f"Validation accuracy (%) by fine-tuning step (exact original: {_percent(exact_valid)}):",
        "",
        "| step | " + " | ".join(str(s) for s, _ in curves["converted"]) + " |",
        "|---|" + "---:|" * len(curves["converted"]),
        "| converted | " + " | ".join(_percent(a) for _, a in curves["converted"]) + " |",
        "| from scratch | " + " | ".join(_percent(a) for _, a in curves["scratch"]) + " |",
    ]
    report = "\n".join(lines) + "\n"
    (out_dir / "backcompat.md").write_text(report)
    (out_dir / "backcompat.json").write_text(
        json.dumps(
            {
                "exact_dir": str(exact_dir),
                "training": asdict(training),
                "exact": {"valid_accuracy": exact_valid, "test": exact_test},
                "curves": curves,
                "test": tests,
            },
            indent=2,
        )
    )
    return report


def _plot_recovery(curves: dict[str, list[tuple[int, float]]], exact_valid: float, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot([s for s, _ in curve], [100 * a for _, a in curve], marker="o", label=f"FAVOR+ {name}")
    ax.axhline(100 * exact_valid, color="k", linestyle="--", label="exact original")
    ax.set(xlabel="fine-tuning step", ylabel="validation accuracy (%)", title="backward compatibility")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
