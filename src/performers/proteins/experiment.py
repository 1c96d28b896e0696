"""The main job: train protein language models on the shipped corpus and compare attentions.

``run_training`` trains one model (FAVOR+ or exact softmax, masked or causal) and evaluates it
on the test split; ``compare`` trains a FAVOR+ model and its exact-softmax twin — same
architecture, same initial weights, same data order and masks, same number of steps — and
reports accuracy, perplexity, the empirical (unigram) baseline, tokens/s and peak memory, with
learning-curve plots. ``performers demo`` runs ``compare`` on a budget that fits a laptop CPU.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from performers.models.config import PerformerConfig
from performers.models.performer import PerformerForCausalLM, PerformerForMaskedLM
from performers.proteins.data import UnigramBaseline, read_split
from performers.proteins.tokenizer import ProteinTokenizer
from performers.training.trainer import Trainer, TrainingConfig
from performers.utils import peak_rss_reset, rss_kib

__all__ = [
    "DEFAULT_CORPUS",
    "DEMO_VARIANTS",
    "TABLE2_VARIANTS",
    "ModelSize",
    "Variant",
    "compare",
    "run_training",
    "train_variants",
]

DEFAULT_CORPUS = Path(__file__).resolve().parents[3] / "data" / "proteins" / "mlm_corpus_refseq17.fasta.gz"


@dataclass
class ModelSize:
    d_model: int = 128
    num_layers: int = 2
    num_heads: int = 4
    d_ff: int = 256
    num_features: int = 64
    dropout: float = 0.1


@dataclass
class RunResult:
    name: str
    test: dict
    train_seconds: float
    tokens_per_second: float
    peak_extra_mib: float
    parameters: int
    extra: dict = field(default_factory=dict)


def _build_model(task: str, attention: str, kernel: str, size: ModelSize, max_length: int, seed: int):
    tokenizer = ProteinTokenizer()
    config = PerformerConfig(
        vocab_size=len(tokenizer),
        d_model=size.d_model,
        num_layers=size.num_layers,
        num_heads=size.num_heads,
        d_ff=size.d_ff,
        num_features=size.num_features,
        max_position_embeddings=max_length,
        attention=attention,
        kernel=kernel,
        dropout=size.dropout,
        pad_token_id=tokenizer.pad_id,
        seed=seed,
    )
    torch.manual_seed(seed)  # the same initial weights for every attention
    model = (PerformerForCausalLM if task == "clm" else PerformerForMaskedLM)(config)
    return model, tokenizer


def run_training(
    name: str,
    *,
    out_dir: str | Path,
    attention: str = "favor",
    kernel: str = "softmax",
    size: ModelSize | None = None,
    training: TrainingConfig | None = None,
    corpus: str | Path = DEFAULT_CORPUS,
    train_limit: int | None = None,
    test_limit: int | None = None,
    resume: bool = False,
    evaluate: bool = True,
    log=print,
) -> RunResult:
    """Train one model on the corpus's train split and evaluate it on its test split.

    ``tokens_per_second`` counts the non-padding tokens of the training batches over the time
    spent in training steps (forward, backward, optimizer), without evaluation or checkpoints;
    ``peak_extra_mib`` is the growth of the process's peak resident memory during the run.
    """
    size = size or ModelSize()
    training = training or TrainingConfig()
    out_dir = Path(out_dir)
    train = read_split(corpus, "train")[:train_limit]
    valid = read_split(corpus, "valid")[: max(64, training.batch_size * training.eval_batches)]
    test = read_split(corpus, "test")[:test_limit]
    model, tokenizer = _build_model(
        training.task, attention, kernel, size, training.max_length, training.seed
    )
    trainer = Trainer(
        model, tokenizer, train, valid, training, out_dir, log=lambda line: log(f"[{name}] {line}")
    )
    base = peak_rss_reset()
    start = time.perf_counter()
    trainer.fit(resume=resume)
    seconds = time.perf_counter() - start
    peak = (rss_kib("VmHWM") - base) / 1024
    rate = trainer.tokens_seen / max(trainer.train_seconds, 1e-9)
    parameters = sum(p.numel() for p in model.parameters())
    if trainer.rank != 0:  # under torchrun, rank 0 evaluates and saves
        return RunResult(name, {}, seconds, rate, peak, parameters)
    test_metrics = trainer.evaluate(test) if evaluate else {}
    model.save_pretrained(out_dir / "final")
    tokenizer.save(out_dir / "final" / "tokenizer.json")
    return RunResult(name, test_metrics, seconds, rate, peak, parameters)


def _run_in_child(name: str, kwargs: dict) -> RunResult:
    torch.set_num_threads(kwargs.pop("threads"))
    return run_training(name, **kwargs)


def _plot(runs: dict[str, Path], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, out_dir in runs.items():
        records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
        left.plot([r["step"] for r in records], [r["loss"] for r in records], label=name, alpha=0.8)
        evals = [r for r in records if "valid_accuracy" in r]
        right.plot([r["step"] for r in evals], [r["valid_accuracy"] for r in evals], marker="o", label=name)
    left.set(xlabel="step", ylabel="training loss", title="training loss")
    right.set(xlabel="step", ylabel="accuracy", title="validation accuracy")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class Variant:
    """One model of a comparison: its attention, kernel and (optionally) its own step count."""

    name: str
    directory: str
    attention: str = "favor"
    kernel: str = "softmax"
    max_steps: int | None = None  # None: the comparison's TrainingConfig.max_steps


DEMO_VARIANTS = (
    Variant("Performer (FAVOR+)", "favor"),
    Variant("Transformer (exact)", "exact", attention="exact"),
)
# The rows of the paper's Table 2 (besides the empirical baseline).
TABLE2_VARIANTS = (
    Variant("Transformer (exact)", "exact", attention="exact"),
    Variant("Performer-softmax (FAVOR+)", "favor-softmax", kernel="softmax"),
    Variant("Performer-ReLU (generalized)", "favor-relu", kernel="relu"),
)


def train_variants(
    variants: tuple[Variant, ...],
    *,
    out_dir: str | Path,
    size: ModelSize | None = None,
    training: TrainingConfig | None = None,
    corpus: str | Path = DEFAULT_CORPUS,
    train_limit: int | None = None,
    test_limit: int | None = None,
    evaluate: bool = True,
) -> list[RunResult]:
    """Train every variant with the same initial weights, data order and masks.

    Each run is in a fresh spawned process so that its peak memory and speed do not depend on
    the run before; ``out_dir/<variant.directory>`` holds its checkpoints, metrics and model.
    """
    out_dir = Path(out_dir)
    training = training or TrainingConfig()
    context = multiprocessing.get_context("spawn")
    results = []
    for variant in variants:
        config = training if variant.max_steps is None else replace(training, max_steps=variant.max_steps)
        kwargs = dict(
            out_dir=out_dir / variant.directory,
            attention=variant.attention,
            kernel=variant.kernel,
            size=size,
            training=config,
            corpus=corpus,
            train_limit=train_limit,
            test_limit=test_limit,
            evaluate=evaluate,
            threads=torch.get_num_threads(),
        )
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            results.append(pool.submit(_run_in_child, variant.name, kwargs).result())
    return results


def _baseline(corpus: str | Path, train_limit: int | None, test_limit: int | None) -> dict:
    tokenizer = ProteinTokenizer()
    baseline = UnigramBaseline(read_split(corpus, "train")[:train_limit], tokenizer)
    return baseline.evaluate(read_split(corpus, "test")[:test_limit])


def compare(
    *,
    out_dir: str | Path,
    size: ModelSize | None = None,
    training: TrainingConfig | None = None,
    corpus: str | Path = DEFAULT_CORPUS,
    train_limit: int | None = None,
    test_limit: int | None = None,
    variants: tuple[Variant, ...] = DEMO_VARIANTS,
    log=print,
) -> str:
    """Train the variants (default: FAVOR+ and its exact-softmax twin) and return a markdown
    report (also written to ``out_dir/report.md`` and ``report.json``)."""
    out_dir = Path(out_dir)
    training = training or TrainingConfig()
    results = train_variants(
        variants,
        out_dir=out_dir,
        size=size,
        training=training,
        corpus=corpus,
        train_limit=train_limit,
        test_limit=test_limit,
    )
    dirs = {v.name: out_dir / v.directory for v in variants}
    base = _baseline(corpus, train_limit, test_limit)
    what = "masked positions" if training.task == "mlm" else "next tokens"
    lines = [
        f"Protein {'masked' if training.task == 'mlm' else 'causal'} LM, {training.max_steps} steps, "
        f"batch {training.batch_size}, L = {training.max_length}; test split, accuracy over {what}",
        "",
        "| model | accuracy | perplexity | train tokens/s | peak extra memory | parameters |",
        "|---|---:|---:|---:|---:|---:|",
        f"| empirical baseline (unigram) | {100 * base['accuracy']:.2f}% | {base['perplexity']:.2f} "
        "| — | — | — |",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {100 * r.test['accuracy']:.2f}% | {r.test['perplexity']:.2f} | "
            f"{r.tokens_per_second:,.0f} | {r.peak_extra_mib:.0f} MiB | {r.parameters:,} |"
        )
    plot = _plot(dirs, out_dir / "learning_curves.png")
    if plot is not None:
        lines += ["", f"Learning curves: {plot}"]
    report = "\n".join(lines) + "\n"
    (out_dir / "report.md").write_text(report)
    (out_dir / "report.json").write_text(
        json.dumps(
            {"baseline": base, "runs": [asdict(r) for r in results], "training": asdict(training)}, indent=2
        )
    )
    return report
