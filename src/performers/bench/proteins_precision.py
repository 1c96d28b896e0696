"""``performers bench proteins-precision``: bfloat16 against float32 training of the protein
model — tokens/s and the loss after a fixed number of steps, over several seeds.

For every seed, a float32 run and a ``bf16`` (autocast) run of the same model, data order and
masks are trained back to back (interleaved, so a change of the machine's load hits both), each
in a fresh process. Speed: the run's real (non-padding) training tokens per second of stepping,
and the median step time with the first (warm-up) step left out. Loss: the mean training loss
of the last ``tail`` steps. bfloat16 is "within the seed-to-seed spread" when its mean final
loss differs from float32's by no more than the standard deviation of float32's final losses
over the seeds.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from performers.bench.results import write_results
from performers.jobs.proteins import Variant, train_variants
from performers.models import PerformerConfig
from performers.training import TrainingConfig

__all__ = ["PrecisionRun", "precision_comparison", "summarize_precision"]

PRECISIONS = ("float32", "bfloat16")


@dataclass
class PrecisionRun:
    precision: str
    seed: int
    step_seconds: float  # median, warm-up step excluded
    tokens_per_second: float  # real (non-padding) training tokens per second of stepping
    final_loss: float  # mean training loss of the last `tail` steps
    steps: int


def _read_run(
    directory: Path, precision: str, seed: int, tokens_per_second: float, tail: int
) -> PrecisionRun:
    records = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_seconds"] for r in records[1:]] or [records[0]["step_seconds"]]
    final = statistics.fmean(r["loss"] for r in records[-tail:])
    return PrecisionRun(precision, seed, statistics.median(times), tokens_per_second, final, len(records))


def summarize_precision(runs: list[PrecisionRun]) -> dict:
    """Per precision: mean tokens/s and final loss (with its spread over seeds); the speed-up of
    bfloat16 and whether its loss is within float32's seed-to-seed spread."""
    summary: dict = {}
    for precision in PRECISIONS:
        mine = [r for r in runs if r.precision == precision]
        losses = [r.final_loss for r in mine]
        summary[precision] = {
            "tokens_per_second": statistics.fmean(r.tokens_per_second for r in mine),
            "final_loss_mean": statistics.fmean(losses),
            "final_loss_sd": statistics.stdev(losses) if len(losses) > 1 else 0.0,
            "final_loss_range": [min(losses), max(losses)],
        }
    f32, b16 = summary["float32"], summary["bfloat16"]
    summary["speedup"] = b16["tokens_per_second"] / f32["tokens_per_second"]
    summary["loss_difference"] = b16["final_loss_mean"] - f32["final_loss_mean"]
    summary["within_spread"] = abs(summary["loss_difference"]) <= f32["final_loss_sd"]
    return summary


def precision_comparison(
    model_config: PerformerConfig,
    training: TrainingConfig,
    *,
    out_dir: str | Path,
    seeds: tuple[int, ...] = (0, 1, 2),
    tail: int = 20,
    corpus: str | Path | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> str:
    """Train float32 and bfloat16-autocast runs for every seed; write ``precision.md``/``.json``.

    Returns the markdown report. ``training.bf16`` and ``training.seed`` are set per run.
    """
    if len(seeds) < 2:
        raise ValueError(f"seeds: the seed-to-seed spread needs at least 2 seeds, got {list(seeds)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in seeds:
        for precision in PRECISIONS:  # interleaved: a change of load hits both precisions
            directory = f"{precision}-seed{seed}"
            config = replace(training, seed=seed, bf16=precision == "bfloat16", eval_every=10**9)
            (result,) = train_variants(
                (Variant(f"{precision} seed {seed}", directory),),
                model_config,
                config,
                out_dir=out_dir,
                corpus=corpus,
                train_limit=train_limit,
                test_limit=test_limit,
                evaluate=False,
            )
            runs.append(_read_run(out_dir / directory, precision, seed, result.tokens_per_second, tail))
    summary = summarize_precision(runs)
    f32, b16 = summary["float32"], summary["bfloat16"]
    lines = [
        f"{'Masked' if training.task == 'mlm' else 'Causal'} protein LM, {training.max_steps} steps of batch "
        f"{training.batch_size}, L = {training.max_length}; d_model {model_config.d_model}, "
        f"{model_config.num_layers} layers, {model_config.num_heads} heads, "
        f"M = {model_config.favor.num_features}. "
        f"Final loss: mean training loss of the last {tail} steps.",
        "",
        "| precision | seed | s/step | train tokens/s | final loss |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {r.precision} | {r.seed} | {r.step_seconds:.3f} | {r.tokens_per_second:,.0f} "
            f"| {r.final_loss:.4f} |"
            for r in runs
        ),
        "",
        f"- bfloat16 autocast: {b16['tokens_per_second']:,.0f} vs {f32['tokens_per_second']:,.0f} tokens/s "
        f"(**{summary['speedup']:.2f}×**).",
        f"- Final loss: float32 {f32['final_loss_mean']:.4f} ± {f32['final_loss_sd']:.4f} (sd over "
        f"{len(seeds)} seeds), bfloat16 {b16['final_loss_mean']:.4f} ± {b16['final_loss_sd']:.4f}; "
        f"difference {summary['loss_difference']:+.4f}: "
        + ("within" if summary["within_spread"] else "outside")
        + " float32's seed-to-seed spread.",
    ]
    report = "\n".join(lines) + "\n"
    record = {
        "model": model_config.to_dict(),
        "training": asdict(training),
        "tail": tail,
        "runs": [asdict(r) for r in runs],
        "summary": summary,
    }
    write_results(out_dir / "precision.json", record, report)
    return report
