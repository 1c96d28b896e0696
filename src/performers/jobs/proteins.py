"""The main job: protein language models on the shipped corpus, FAVOR+ against exact attention.

:func:`run_training` trains one model (masked or causal, any attention) on the corpus's train
split and evaluates it on the test split; :func:`compare` trains a FAVOR+ model and its
exact-softmax twin — same architecture, same initial weights, same data order and masks, same
number of steps — and reports accuracy, perplexity, the empirical (unigram) baseline, tokens/s
and peak memory, with learning-curve plots. ``performers demo`` runs :func:`compare` on a budget
that fits a laptop CPU (:data:`DEMO_MODEL`).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from performers.jobs.protein_evaluation import (
    corpus_split,
    corpus_splits,
    protein_evaluator,
    protein_lengths,
    residues_as_scored,
)
from performers.jobs.protein_models import refuse_finetuned
from performers.jobs.results_file import Metric, write_results
from performers.layers import FavorConfig
from performers.models import PerformerConfig, build_model, from_pretrained
from performers.proteins import (
    LanguageModelExamples,
    ProteinTokenizer,
    UnigramBaseline,
)
from performers.training import Trainer, TrainingConfig, collectively, owned, resolve_device, start_fresh
from performers.utils import peak_rss_reset, rss_kib

__all__ = [
    "DEMO_MODEL",
    "DEMO_VARIANTS",
    "TABLE2_VARIANTS",
    "RunResult",
    "Variant",
    "compare",
    "load_trained",
    "plot_learning_curves",
    "protein_model_config",
    "protein_trainer",
    "run_training",
    "train_protein_model",
    "train_variants",
    "unigram_baseline",
    "write_training_results",
]


def protein_model_config(
    *,
    d_model: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    d_ff: int = 256,
    dropout: float = 0.1,
    max_length: int = 256,
    position: str = "learned",
    attention: str = "favor",
    favor: FavorConfig | None = None,
    tokenizer: ProteinTokenizer | None = None,
) -> PerformerConfig:
    """A :class:`~performers.PerformerConfig` for protein sequences: the vocabulary and padding id
    of ``tokenizer`` (default :class:`ProteinTokenizer`) and the given sizes (defaults: the demo's
    small model). ``position="learned"`` limits the model to ``max_length`` tokens;
    ``"rotary"`` has no limit (embed or score proteins of any length).

    Raises:
        ValueError: ``max_length`` below 3 (``<cls>``, a residue, ``<eos>``), or a field
            :class:`~performers.PerformerConfig` refuses.
    """
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3 (<cls>, a residue, <eos>), got {max_length}")
    tokenizer = tokenizer or ProteinTokenizer()
    return PerformerConfig(
        vocab_size=len(tokenizer),
        d_model=d_model,
        num_layers=num_layers,
        num_heads=num_heads,
        d_ff=d_ff,
        max_position_embeddings=max_length,
        position=position,
        dropout=dropout,
        attention=attention,
        favor=FavorConfig() if favor is None else favor,
        pad_token_id=tokenizer.pad_id,
    )


# The demo's model: small enough to train for 150 steps on a laptop CPU in about a minute.
DEMO_MODEL = protein_model_config(favor=FavorConfig(num_features=64))


@dataclass
class RunResult:
    name: str
    test: dict
    train_seconds: float
    tokens_per_second: float
    peak_extra_mib: float
    parameters: int
    extra: dict = field(default_factory=dict)


def protein_trainer(
    model: torch.nn.Module,
    tokenizer: ProteinTokenizer,
    train: list[str],
    valid: list[str],
    training: TrainingConfig,
    out_dir: str | Path,
    log=print,
) -> Trainer:
    """A :class:`~performers.training.Trainer` on protein sequences: language-model examples
    of ``train``, validation on ``training.eval_batches`` fixed batches of ``valid``."""
    examples = LanguageModelExamples(
        train,
        tokenizer,
        task=training.task,
        max_length=training.max_length,
        mask_prob=training.mask_prob,
        concatenate=training.concatenate,
    )
    evaluate = protein_evaluator(tokenizer, valid, training, training.eval_batches)
    return Trainer(model, examples, training, out_dir, evaluate=evaluate, log=log)


def run_training(
    model_config: PerformerConfig,
    training: TrainingConfig,
    *,
    out_dir: str | Path,
    name: str = "run",
    corpus: str | Path | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    resume: bool = False,
    evaluate: bool = True,
    device: str | torch.device = "cpu",
    log=print,
) -> RunResult:
    """Train one model on the corpus's train split and evaluate it on its test split.

    The model is ``build_model(model_config, training.task)`` initialized after
    ``torch.manual_seed(training.seed)`` (so two configs that differ only in attention start
    from the same weights). ``out_dir`` gets ``checkpoints/``, ``metrics.jsonl``, ``final/``
    (the trained model and its ``tokenizer.json``) and ``results.json`` (the test metrics beside
    the unigram baseline of the training split, :func:`write_training_results`; also the
    result's ``extra["metrics"]``). ``tokens_per_second`` counts the non-padding tokens of the
    training batches over the time spent in training steps (forward, backward,
    optimizer), without evaluation or checkpoints; ``peak_extra_mib`` is the growth of the
    process's peak resident memory during the run. ``corpus`` defaults to the shipped one.
    ``device``: where the model trains and is evaluated (``"cuda"``, ``"auto"``: see
    :func:`~performers.training.resolve_device`); it is initialized on the CPU first, so every
    device starts from the same weights.
    """
    out_dir = Path(out_dir)
    train, valid, test = corpus_splits(corpus, training, train_limit, test_limit)
    for split, records in (("train", train), ("valid", valid)):
        if len(records) == 0:
            raise ValueError(
                f"{corpus or 'the corpus'}: its {split} split is empty; training needs train and valid"
            )
    tokenizer = ProteinTokenizer()
    torch.manual_seed(training.seed)  # the same initial weights for every attention
    model = build_model(model_config, training.task).to(resolve_device(device))
    trainer = protein_trainer(
        model, tokenizer, train, valid, training, out_dir, log=lambda line: log(f"[{name}] {line}")
    )
    base = peak_rss_reset()
    start = time.perf_counter()
    trainer.fit(resume=resume)
    seconds = time.perf_counter() - start
    peak = (rss_kib("VmHWM") - base) / 1024
    rate = trainer.tokens_seen / max(trainer.train_seconds, 1e-9)
    parameters = sum(p.numel() for p in model.parameters())
    # Under torchrun rank 0 saves the model, every process learning whether it could (a full
    # disk stops them all with the error, as in training), then evaluates it alone.
    with collectively(trainer.device):
        if trainer.rank == 0:
            model.save_pretrained(out_dir / "final")
            tokenizer.save(out_dir / "final" / "tokenizer.json")
    if trainer.rank != 0:
        return RunResult(name, {}, seconds, rate, peak, parameters)
    split = "test"
    if evaluate and len(test) == 0:  # a prepared dataset without a test split
        log(f"[{name}] no test split: evaluating on the validation records")
        test, split = valid, "valid"
    test_metrics = protein_evaluator(tokenizer, test, training)(model) if evaluate else {}
    extra = {}
    if evaluate:
        metrics = write_training_results(out_dir, train, test, split, test_metrics, training, tokenizer)
        extra = {"metrics": metrics, "results": str(out_dir / "results.json")}
    return RunResult(name, test_metrics, seconds, rate, peak, parameters, extra)


def write_training_results(
    out_dir: Path,
    train,
    test,
    split: str,
    test_metrics: dict,
    training: TrainingConfig,
    tokenizer: ProteinTokenizer,
) -> dict[str, Metric]:
    """``out_dir/results.json`` of a training run: the test metrics, each beside the unigram of
    the training split (``train``'s residue frequencies, :class:`UnigramBaseline`) on the same
    test residues as the model read them (each protein's first ``max_length - 2``: the run's
    evaluation crop; whole proteins when ``concatenate``). The unigram itself is kept
    (``"unigram"``), so that ``performers evaluate`` of this run compares with it."""
    unigram = UnigramBaseline(train, tokenizer)
    lengths = protein_lengths(test)
    keep = lengths if training.concatenate else [min(n, training.max_length - 2) for n in lengths]
    base = unigram.evaluate(residues_as_scored(test, range(len(lengths)), keep, tokenizer))
    name, count = "unigram (training split)", int(test_metrics["tokens"])
    metrics = {
        "accuracy": Metric(test_metrics["accuracy"], base["accuracy"], name, True, count),
        "perplexity": Metric(test_metrics["perplexity"], base["perplexity"], name, False, count),
    }
    cropped = sum(n > k for n, k in zip(lengths, keep, strict=True))
    write_results(
        out_dir / "results.json",
        command="train",
        metrics=metrics,
        split=split,
        task=training.task,
        proteins=len(lengths),
        cropped=cropped,
        max_length=training.max_length,
        model="final",
        unigram=unigram.to_dict(),
    )
    return metrics


def train_protein_model(
    model_config: PerformerConfig,
    training: TrainingConfig,
    *,
    out_dir: str | Path,
    name: str = "run",
    corpus: str | Path | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
) -> RunResult:
    """:func:`run_training` in a run directory that belongs to the run, as ``performers train``
    runs it, in one process or in every process of a ``torch.distributed`` job.

    Rank 0 owns ``out_dir`` (:func:`~performers.training.owned`) from the start to the saved
    model. A fresh run (not ``resume``) refuses a directory holding an earlier run unless
    ``overwrite``, which moves that run aside (:func:`~performers.training.start_fresh`); the
    other processes wait for it. What rank 0 does alone — taking the lock, moving the earlier
    run, writing checkpoints, metrics and ``final/`` — raises in every process when it fails
    (:func:`~performers.training.collectively`). Only rank 0's result has ``test`` metrics.

    Raises:
        DirectoryLockedError, RunDirectoryError: ``out_dir`` is another run's, or holds an
            earlier run (without ``resume`` or ``overwrite``).
        ResumeMismatchError, CheckpointError: a resume with other options, or no usable checkpoint.
        performers.utils.DiskWriteError: a checkpoint, metrics line or ``final/`` could not be
            written (in every process; on the others, ``writer`` says which wrote).
        performers.training.RankFailedError: another process of the job failed (it reports why).
    """
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    rank = dist.get_rank() if distributed else 0
    with contextlib.ExitStack() as stack:
        # Leaving the block together: the earlier run is moved before any process looks.
        with collectively(resolve_device(device)):
            if rank == 0:
                stack.enter_context(owned(out_dir))
            if not resume:  # an earlier run in out_dir: refused, or moved aside (overwrite)
                start_fresh(out_dir, overwrite=overwrite, clear=rank == 0)
        return run_training(
            model_config,
            training,
            out_dir=out_dir,
            name=name,
            corpus=corpus,
            train_limit=train_limit,
            test_limit=test_limit,
            resume=resume,
            device=device,
        )


def load_trained(directory: str | Path, **overrides):
    """``(model, tokenizer)`` of a run directory written by :func:`run_training` (its
    ``final/``) or of a ``save_pretrained`` directory holding ``tokenizer.json``, in eval mode.

    ``overrides`` are config fields for :func:`performers.from_pretrained` (None values are
    ignored), e.g. ``attention="exact"``.

    Raises:
        NotALanguageModelError: a fine-tuned model (``performers finetune``'s ``final/``), which
            ``evaluate`` and ``generate`` cannot run (one line saying what does).
    """
    refuse_finetuned(directory)
    path = Path(directory)
    if (path / "final").is_dir():
        path = path / "final"
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return from_pretrained(path, **overrides), ProteinTokenizer.load(path / "tokenizer.json")


def _run_in_child(kwargs: dict) -> RunResult:
    torch.set_num_threads(kwargs.pop("threads"))
    return run_training(**kwargs)


def plot_learning_curves(runs: dict[str, Path], path: Path) -> Path | None:
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

    def model_config(self, base: PerformerConfig) -> PerformerConfig:
        """``base`` with this variant's attention backend and kernel."""
        return replace(base, attention=self.attention, favor=replace(base.favor, kernel=self.kernel))


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
    model_config: PerformerConfig,
    training: TrainingConfig,
    *,
    out_dir: str | Path,
    corpus: str | Path | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    evaluate: bool = True,
    device: str | torch.device = "cpu",
) -> list[RunResult]:
    """Train every variant of ``model_config`` with the same initial weights, data order and masks.

    Each run is in a fresh spawned process so that its peak memory and speed do not depend on
    the run before; ``out_dir/<variant.directory>`` holds its checkpoints, metrics and model.
    ``device``: where each trains (:func:`run_training`).
    """
    out_dir = Path(out_dir)
    context = multiprocessing.get_context("spawn")
    results = []
    for variant in variants:
        config = training if variant.max_steps is None else replace(training, max_steps=variant.max_steps)
        kwargs = dict(
            model_config=variant.model_config(model_config),
            training=config,
            out_dir=out_dir / variant.directory,
            name=variant.name,
            corpus=corpus,
            train_limit=train_limit,
            test_limit=test_limit,
            evaluate=evaluate,
            device=device,
            threads=torch.get_num_threads(),
        )
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            results.append(pool.submit(_run_in_child, kwargs).result())
    return results


def unigram_baseline(
    corpus: str | Path | None = None, train_limit: int | None = None, test_limit: int | None = None
) -> dict:
    """The paper's empirical baseline on the test split: residue frequencies of the train split."""
    baseline = UnigramBaseline(corpus_split(corpus, "train", train_limit), ProteinTokenizer())
    return baseline.evaluate(corpus_split(corpus, "test", test_limit))


def compare(
    model_config: PerformerConfig = DEMO_MODEL,
    training: TrainingConfig | None = None,
    *,
    out_dir: str | Path,
    corpus: str | Path | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    variants: tuple[Variant, ...] = DEMO_VARIANTS,
    device: str | torch.device = "cpu",
) -> str:
    """Train the variants (default: FAVOR+ and its exact-softmax twin) on ``device`` and return a
    markdown report (also written to ``out_dir/report.md`` and ``report.json``)."""
    out_dir = Path(out_dir)
    training = training or TrainingConfig()
    results = train_variants(
        variants,
        model_config,
        training,
        out_dir=out_dir,
        corpus=corpus,
        train_limit=train_limit,
        test_limit=test_limit,
        device=device,
    )
    dirs = {v.name: out_dir / v.directory for v in variants}
    base = unigram_baseline(corpus, train_limit, test_limit)
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
    plot = plot_learning_curves(dirs, out_dir / "learning_curves.png")
    if plot is not None:
        lines += ["", f"Learning curves: {plot}"]
    report = "\n".join(lines) + "\n"
    (out_dir / "report.md").write_text(report)
    (out_dir / "report.json").write_text(
        json.dumps(
            {
                "baseline": base,
                "runs": [asdict(r) for r in results],
                "model": model_config.to_dict(),
                "training": asdict(training),
            },
            indent=2,
        )
    )
    return report
