"""``performers bench packing``: padded against packed training batches (``TrainingConfig.pack``)
— real tokens/s, padding fraction, peak memory and the loss per real token.

For every crop (``max_length``) and attention, a padded run (each step's proteins padded to the
longest) and a packed run (the same proteins laid end to end in one row, no padding) train
the same model from the same initial weights on the same example stream for the same number of
steps: ``batch_size`` counts proteins, so both see the same proteins and the same real tokens.
The two runs of a pair alternate their order from pair to pair (A/B, B/A, ...), so a drift of
the machine's load does not favour one layout; each run is in a fresh process
(:func:`~performers.jobs.proteins.train_variants`), which also makes its peak memory its own.

Speed: the median of the steps' real (non-padding) tokens/s, the first ``warmup_steps`` steps
left out. Memory: a separate run of each pair's first ``memory_steps`` steps (fresh processes,
the same batches) with glibc told to return every allocation of 64 KiB or more to the OS
(``MALLOC_MMAP_THRESHOLD_``, as :mod:`performers.bench.speed` does), so its peak resident memory
is the working set; the timed run's own peak growth is kept too (``rss_growth_mib``) — it
includes what the allocator keeps for reuse, which grows with how much the step's shapes vary
(a packed row's length changes every step) rather than with the memory a step needs. Loss: the
training loss is the mean over labelled tokens (next tokens, or masked residues), the same
per-token loss in both layouts; the final loss is its mean over the last ``tail`` steps, and
the curve is loss against real tokens seen.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from performers.bench.environment import allocations_returned_to_the_os
from performers.bench.protein_report import model_sizes
from performers.bench.results import write_results
from performers.jobs.proteins import Variant, train_variants
from performers.models import PerformerConfig
from performers.training import TrainingConfig

__all__ = ["TARGET_CROP", "TARGET_SPEEDUP", "PackingRun", "packing_comparison", "read_packing_run"]

# Issue 28's target: packed at least 1.8× the real tokens/s of padded at crop 1024.
TARGET_CROP, TARGET_SPEEDUP = 1024, 1.8
ATTENTIONS = ("favor", "exact")
LAYOUTS = ("padded", "packed")


@dataclass
class PackingRun:
    crop: int
    attention: str
    layout: str  # "padded" or "packed"
    tokens_per_second: float  # median real tokens/s of the steps after the warm-up
    padding_fraction: float  # mean over the steps of the share of computed positions that pad
    peak_extra_mib: float  # peak resident growth of the memory run (working set, see above)
    final_loss: float  # mean training loss (per labelled token) of the last `tail` steps
    steps: int
    curve: list[list[float]]  # [real tokens seen, training loss] after each step
    rss_growth_mib: float = float("nan")  # the timed run's peak resident growth (allocator reuse in)


def read_packing_run(
    directory: Path, crop: int, attention: str, layout: str, peak: float, warmup_steps: int, tail: int
) -> PackingRun:
    """A run's summary from its ``metrics.jsonl``."""
    records = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    timed = records[warmup_steps:] or records[-1:]
    seen, curve = 0.0, []
    for r in records:
        # tokens_per_second is the step's real tokens over its seconds: their product is the count.
        seen += round(r["tokens_per_second"] * r["step_seconds"])
        curve.append([seen, r["loss"]])
    return PackingRun(
        crop=crop,
        attention=attention,
        layout=layout,
        tokens_per_second=statistics.median(r["tokens_per_second"] for r in timed),
        padding_fraction=statistics.fmean(r["padding_fraction"] for r in records),
        peak_extra_mib=peak,
        final_loss=statistics.fmean(r["loss"] for r in records[-tail:]),
        steps=len(records),
        curve=curve,
    )


def _pair_order(index: int) -> tuple[str, ...]:
    """Interleaved A/B order: pair 0 padded first, pair 1 packed first, ..."""
    return LAYOUTS if index % 2 == 0 else LAYOUTS[::-1]


def _plot(runs: list[PackingRun], crops: tuple[int, ...], attentions: tuple[str, ...], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the plot is optional; the JSON has the curves
        return
    fig, axes = plt.subplots(
        len(crops), len(attentions), figsize=(5 * len(attentions), 3.5 * len(crops)), squeeze=False
    )
    for i, crop in enumerate(crops):
        for j, attention in enumerate(attentions):
            ax = axes[i][j]
            for r in runs:
                if (r.crop, r.attention) == (crop, attention):
                    xs, ys = zip(*r.curve, strict=True)
                    ax.plot(xs, ys, label=r.layout, alpha=0.8)
            ax.set(title=f"{attention}, crop {crop}", xlabel="real tokens seen", ylabel="loss per real token")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _speedups(runs: list[PackingRun]) -> dict[str, float]:
    """Packed over padded real tokens/s per ``"<attention>@<crop>"``."""
    by_key = {(r.crop, r.attention, r.layout): r for r in runs}
    return {
        f"{attention}@{crop}": by_key[crop, attention, "packed"].tokens_per_second
        / by_key[crop, attention, "padded"].tokens_per_second
        for crop, attention, layout in by_key
        if layout == "padded"
    }


def _target_lines(speedups: dict[str, float], attentions: tuple[str, ...]) -> list[str]:
    lines = []
    for attention in attentions:
        key = f"{attention}@{TARGET_CROP}"
        if key not in speedups:
            lines.append(
                f"- Target (packed ≥ {TARGET_SPEEDUP}× padded at crop {TARGET_CROP}), {attention}: "
                f"not measured (crop {TARGET_CROP} not in --crops)."
            )
            continue
        verdict = "met" if speedups[key] >= TARGET_SPEEDUP else "missed"
        lines.append(
            f"- Target (packed ≥ {TARGET_SPEEDUP}× padded at crop {TARGET_CROP}), {attention}: "
            f"**{verdict}** ({speedups[key]:.2f}×)."
        )
    return lines


def _train(attention: str, crop: int, layout: str, directory: str, model, config, out_dir: Path, data):
    """One run in a fresh process (:func:`~performers.jobs.proteins.train_variants`)."""
    (result,) = train_variants(
        (Variant(f"{attention} crop {crop} {layout}", directory, attention=attention),),
        model,
        config,
        out_dir=out_dir,
        evaluate=False,
        **data,
    )
    return result


def packing_comparison(
    model_config: PerformerConfig,
    training: TrainingConfig,
    *,
    out_dir: str | Path,
    crops: tuple[int, ...] = (256, 1024),
    attentions: tuple[str, ...] = ATTENTIONS,
    warmup_steps: int = 1,
    tail: int = 20,
    memory_steps: int = 20,
    corpus: str | Path | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> str:
    """Train padded and packed runs for every crop and attention; write ``packing.md``/``.json``
    and ``packing.png`` (loss per real token against real tokens seen). Returns the markdown.

    ``training.max_length``, ``pack`` and the model's attention and position table are set per
    run; nothing else differs between the two runs of a pair. ``memory_steps``: steps of each
    memory run (at most ``training.max_steps``; see the module docstring).

    Raises:
        ValueError: no crops or attentions, an unknown attention, a crop below 3,
            ``warmup_steps`` not below ``training.max_steps`` (no timed step would be left),
            ``tail`` or ``memory_steps`` below 1, or ``training.concatenate``.
    """
    if not crops or not attentions:
        raise ValueError(f"crops and attentions must not be empty, got {list(crops)} and {list(attentions)}")
    if unknown := sorted(set(attentions) - set(ATTENTIONS)):
        raise ValueError(f"attentions: expected some of {list(ATTENTIONS)}, got {unknown}")
    if min(crops) < 3:
        raise ValueError(f"crops: each must be >= 3 (<cls>, a residue, <eos>), got {list(crops)}")
    if not 0 <= warmup_steps < training.max_steps:
        raise ValueError(
            f"warmup_steps must be in [0, steps {training.max_steps}) so that a timed step is left, "
            f"got {warmup_steps}"
        )
    if training.concatenate:
        raise ValueError("concatenate: packing lays whole proteins in rows; windows have no padding to pack")
    if tail < 1:
        raise ValueError(f"tail must be >= 1, got {tail}")
    if memory_steps < 1:
        raise ValueError(f"memory_steps must be >= 1, got {memory_steps}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs: list[PackingRun] = []
    data = {"corpus": corpus, "train_limit": train_limit, "test_limit": test_limit}
    pair = 0
    for crop in crops:
        model = replace(model_config, max_position_embeddings=crop)
        for attention in attentions:
            for layout in _pair_order(pair):
                directory = f"{attention}-{crop}-{layout}"
                config = replace(training, max_length=crop, pack=layout == "packed", eval_every=10**9)
                timed = _train(attention, crop, layout, directory, model, config, out_dir, data)
                with allocations_returned_to_the_os():
                    memory_config = replace(config, max_steps=min(memory_steps, config.max_steps))
                    memory = _train(
                        attention, crop, layout, f"{directory}-memory", model, memory_config, out_dir, data
                    )
                run = read_packing_run(
                    out_dir / directory, crop, attention, layout, memory.peak_extra_mib, warmup_steps, tail
                )
                runs.append(replace(run, rss_growth_mib=timed.peak_extra_mib))
            pair += 1
    speedups = _speedups(runs)
    _plot(runs, crops, attentions, out_dir / "packing.png")
    lines = [
        f"{'Masked' if training.task == 'mlm' else 'Causal'} protein LM, {training.max_steps} steps of "
        f"batch {training.batch_size} proteins; {model_sizes(model_config)}. Real tokens/s: median "
        f"over the steps after the first {warmup_steps}; final loss: mean training loss per labelled "
        f"token of the last {tail} steps. Peak memory: growth of the peak resident memory of a "
        f"separate run of the first {memory_steps} steps with allocations of 64 KiB or more returned "
        "to the OS (the working set); timed run's growth: the same of the timed run, the "
        "allocator's reuse included.",
        "",
        "| crop | attention | layout | real tokens/s | padding fraction | peak memory (MiB) "
        "| timed run's growth (MiB) | final loss | packed / padded |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        ratio = f"{speedups[f'{r.attention}@{r.crop}']:.2f}×" if r.layout == "packed" else "—"
        lines.append(
            f"| {r.crop} | {r.attention} | {r.layout} | {r.tokens_per_second:,.0f} "
            f"| {r.padding_fraction:.3f} | {r.peak_extra_mib:,.0f} | {r.rss_growth_mib:,.0f} "
            f"| {r.final_loss:.4f} | {ratio} |"
        )
    lines += ["", *_target_lines(speedups, attentions)]
    report = "\n".join(lines) + "\n"
    record = {
        "model": model_config.to_dict(),
        "training": asdict(training),
        "crops": list(crops),
        "attentions": list(attentions),
        "warmup_steps": warmup_steps,
        "tail": tail,
        "memory_steps": memory_steps,
        "runs": [asdict(r) for r in runs],
        "speedups": speedups,
        "target": {"crop": TARGET_CROP, "speedup": TARGET_SPEEDUP},
    }
    write_results(out_dir / "packing.json", record, report)
    return report
