"""Fidelity of FAVOR+ to an ESM-architecture protein masked LM: the exact model, the same model
converted to FAVOR+ at several feature counts M, and each converted model distilled.

The exact model (the teacher) is an ``EsmForMaskedLM`` trained here with softmax attention on
the shipped corpus' training split (:func:`performers.bench.esm_teacher.train_esm_teacher`), the
stand-in for a downloaded ESM-2; or any ESM masked-LM directory given. For each M:

* **converted** — the teacher under FAVOR+ (:func:`~performers.integrations.transformers.performerize`
  with ``FavorConfig(num_features=M, seed=seed)``), weights untouched;
* **distilled** — that student trained to match the teacher's hidden states and output
  distributions on the training split (:func:`performers.jobs.distillation.distill_model`), its
  projections the converted row's (same config, never redrawn).

Every row is measured the same way:

* **masked accuracy and perplexity** on the first ``eval_proteins`` proteins of the corpus' test
  split (:func:`~performers.jobs.hf_protein_lm.evaluate_protein_lm`: 15 % of each protein's
  residues masked at positions drawn with the same seed, so every row predicts the same
  residues from the same inputs; proteins cropped to ``max_length`` tokens);
* **GB1 Spearman** — masked-marginal scores of FLIP's GB1 variants
  (:func:`~performers.bench.gb1_zero_shot.gb1_variants`, the first ``gb1_limit`` or all)
  against their measured fitness.

**Target:** each distilled FAVOR+ model within 1 point (percentage point) of the exact model's
masked accuracy and within 0.02 of its Spearman (absolute differences); the report states met or
missed for each M with both numbers.

``performers bench esm-fidelity`` runs :func:`run_esm_fidelity` and writes ``esm_fidelity.json``
and ``esm_fidelity.md`` through :func:`performers.bench.results.write_results`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from performers.bench.esm_teacher import EsmTeacherConfig, train_esm_teacher
from performers.bench.gb1_zero_shot import GB1Variants, gb1_variants
from performers.bench.results import write_results
from performers.integrations.distill import DistillConfig
from performers.integrations.transformers import is_performerized, performerize
from performers.jobs.distillation import distill_model
from performers.jobs.hf_protein_lm import evaluate_protein_lm, protein_lm_from_directory
from performers.jobs.protein_evaluation import corpus_split
from performers.jobs.protein_lm import ProteinLM
from performers.jobs.scoring import variant_effects
from performers.layers import FavorConfig
from performers.training import spearman
from performers.utils import InputError

__all__ = ["ACCURACY_POINTS", "SPEARMAN_DELTA", "FidelityConfig", "format_report", "run_esm_fidelity"]

# The target: distilled within this many accuracy points and this much Spearman of the exact model.
ACCURACY_POINTS = 1.0
SPEARMAN_DELTA = 0.02


@dataclass(frozen=True)
class FidelityConfig:
    """What :func:`run_esm_fidelity` converts, distils and measures (module docstring); a value
    out of range is a ``ValueError`` whose message starts with the field's name.

    Attributes:
        num_features: the feature counts M of the sweep.
        distill_steps, distill_learning_rate: the distillation of each converted model (its
            batches: ``batch_size`` crops of ``max_length`` tokens, as the teacher's training).
        batch_size, max_length: distillation batches; also the evaluation's proteins per
            forward and crop.
        eval_proteins: the first this many proteins of the test split are evaluated.
        gb1_limit: the first this many GB1 variants are scored (None: all 8,733).
        seed: projections (``FavorConfig.seed``), distillation data order, evaluation masks.
        dtype: the dtype every row is evaluated in (distillation runs in float32).
    """

    num_features: tuple[int, ...] = (64, 128, 256)
    distill_steps: int = 300
    distill_learning_rate: float = 1e-4
    batch_size: int = 32
    max_length: int = 128
    eval_proteins: int = 256
    gb1_limit: int | None = None
    seed: int = 0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not self.num_features or min(self.num_features) < 1:
            raise ValueError(f"num_features must be one or more counts >= 1, got {list(self.num_features)}")
        for name in ("distill_steps", "batch_size", "eval_proteins"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gb1_limit is not None and self.gb1_limit < 3:
            raise ValueError(f"gb1_limit must be >= 3 (a rank correlation), got {self.gb1_limit}")
        if self.max_length < 3:
            raise ValueError(f"max_length must be >= 3 (<cls>, a residue, <eos>), got {self.max_length}")
        if not self.distill_learning_rate > 0:
            raise ValueError(f"distill_learning_rate must be > 0, got {self.distill_learning_rate}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")


def measure(lm: ProteinLM, test: Sequence[str], variants: GB1Variants, config: FidelityConfig) -> dict:
    """Masked accuracy, perplexity and GB1 Spearman of one model (module docstring)."""
    summary, _ = evaluate_protein_lm(
        lm, test, max_length=config.max_length, batch_size=config.batch_size, seed=config.seed
    )
    effects = variant_effects(lm, None, variants.wildtype, variants.records, progress=False)
    scores = torch.tensor([row["score"] for row in effects], dtype=torch.float64)
    return {
        "accuracy": summary["accuracy"],
        "perplexity": summary["perplexity"],
        "loss": summary["loss"],
        "masked_residues": summary["tokens"],
        "gb1_spearman": spearman(scores, variants.fitness),
        "gb1_variants": len(variants.records),
    }


def _load(path: Path, config: FidelityConfig) -> ProteinLM:
    return protein_lm_from_directory(path, dtype=getattr(torch, config.dtype))


def _check_teacher(lm: ProteinLM, path: Path) -> None:
    """A Hugging Face masked LM with softmax attention: what is converted and distilled."""
    loaded = getattr(lm, "protein_model", None)
    if loaded is None or loaded.kind != "masked_lm":
        what = "a performers model" if loaded is None else f"a {type(lm.model).__name__}"
        raise InputError(f"--teacher {path}: {what}; the teacher must be a Hugging Face masked LM (ESM)")
    if is_performerized(loaded.model):
        raise InputError(f"--teacher {path}: a FAVOR+ model already; give the original softmax model")


def fidelity_rows(
    teacher: str | Path,
    train: Sequence[str],
    test: Sequence[str],
    config: FidelityConfig,
    *,
    run_dir: str | Path,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """The exact row, then for each M its converted and distilled rows (module docstring);
    students go to ``run_dir/distilled/M<M>``.

    Raises:
        InputError: ``teacher`` is not a Hugging Face masked LM, or is a FAVOR+ model already.
    """
    teacher = Path(teacher)
    exact = _load(teacher, config)
    _check_teacher(exact, teacher)
    variants = gb1_variants(config.gb1_limit)
    rows = [
        {"model": "exact", "stage": "exact", "num_features": None, **measure(exact, test, variants, config)}
    ]
    log(f"exact: accuracy {rows[0]['accuracy']:.4f}, GB1 Spearman {rows[0]['gb1_spearman']:.3f}")
    for m in config.num_features:
        favor = FavorConfig(num_features=m, seed=config.seed)
        lm = _load(teacher, config)
        performerize(lm.model, favor)
        rows.append(
            {
                "model": f"FAVOR+ M={m}",
                "stage": "converted",
                "num_features": m,
                **measure(lm, test, variants, config),
            }
        )
        log(f"M={m} converted: accuracy {rows[-1]['accuracy']:.4f}")
        distill = DistillConfig(
            steps=config.distill_steps,
            batch_size=config.batch_size,
            learning_rate=config.distill_learning_rate,
            warmup_steps=min(20, config.distill_steps // 10),
            max_length=config.max_length,
            seed=config.seed,
            checkpoint_every=config.distill_steps,
        )
        start = time.perf_counter()
        result, final = distill_model(
            teacher,
            distill,
            favor,
            out_dir=Path(run_dir) / "distilled" / f"M{m}",
            fasta=train,
            overwrite=True,
        )
        seconds = time.perf_counter() - start
        row = {
            "model": f"FAVOR+ M={m}",
            "stage": "distilled",
            "num_features": m,
            **measure(_load(final, config), test, variants, config),
        }
        rows.append(
            {**row, "distill_seconds": seconds, "distill_loss": result["loss"], "student": str(final)}
        )
        log(f"M={m} distilled: accuracy {row['accuracy']:.4f}")
    return rows


def targets(rows: Sequence[dict]) -> list[dict]:
    """For each distilled row: its accuracy and Spearman next to the exact model's, and whether
    each is within the target (:data:`ACCURACY_POINTS`, :data:`SPEARMAN_DELTA`)."""
    exact = rows[0]
    out = []
    for row in rows:
        if row["stage"] != "distilled":
            continue
        points = 100 * abs(row["accuracy"] - exact["accuracy"])
        delta = abs(row["gb1_spearman"] - exact["gb1_spearman"])
        out.append(
            {
                "num_features": row["num_features"],
                "accuracy_points": points,
                "spearman_delta": delta,
                "accuracy_met": points <= ACCURACY_POINTS,
                "spearman_met": delta <= SPEARMAN_DELTA,
            }
        )
    return out


def format_report(result: dict, command: str) -> str:
    """The markdown table of :func:`run_esm_fidelity`'s result, with the target lines."""
    rows, teacher = result["rows"], result["teacher"]
    exact = rows[0]
    shape = teacher.get("config") or {}
    described = (
        f"layers {shape['layers']}, width {shape['width']}, heads {shape['heads']}, "
        f"{shape['steps']} steps of {shape['batch_size']} × {shape['max_length']} tokens"
        if shape
        else "given with --teacher"
    )
    settings = result["settings"]
    lines = [
        "# Fidelity: an ESM masked LM, exact and under FAVOR+ (converted, then distilled)",
        "",
        f"Command: `{command}`. Teacher `{result['teacher_dir']}` ({described}). Masked accuracy and "
        f"perplexity: {exact['masked_residues']:,} masked residues of the first {settings['eval_proteins']} "
        f"test-split proteins (the same positions for every row); GB1 Spearman: masked marginals of "
        f"{exact['gb1_variants']:,} variants against fitness. Distillation: {settings['distill_steps']} "
        f"steps; evaluation in {settings['dtype']}.",
        "",
        "| model | stage | masked accuracy (%) | perplexity | GB1 Spearman | Δ accuracy (points) "
        "| Δ Spearman |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['stage']} | {100 * row['accuracy']:.2f} | {row['perplexity']:.3f} | "
            f"{row['gb1_spearman']:.3f} | {100 * (row['accuracy'] - exact['accuracy']):+.2f} | "
            f"{row['gb1_spearman'] - exact['gb1_spearman']:+.3f} |"
        )
    lines += [
        "",
        f"**Target:** distilled FAVOR+ within {ACCURACY_POINTS:g} point of the exact model's masked "
        f"accuracy and within {SPEARMAN_DELTA} of its Spearman.",
        "",
    ]
    for t in result["targets"]:
        verdict = "met" if t["accuracy_met"] and t["spearman_met"] else "missed"
        within_accuracy = "within" if t["accuracy_met"] else "over"
        within_spearman = "within" if t["spearman_met"] else "over"
        lines.append(
            f"* M={t['num_features']}: **{verdict}** — accuracy {t['accuracy_points']:.2f} points from exact "
            f"({within_accuracy} {ACCURACY_POINTS:g}), Spearman {t['spearman_delta']:.3f} from exact "
            f"({within_spearman} {SPEARMAN_DELTA})."
        )
    return "\n".join(lines) + "\n"


def run_esm_fidelity(
    config: FidelityConfig,
    *,
    out: str | Path,
    run_dir: str | Path,
    command: str,
    teacher: str | Path | None = None,
    teacher_config: EsmTeacherConfig | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train the teacher into ``run_dir/teacher`` (``teacher_config``) unless ``teacher`` (an ESM
    masked-LM directory) is given, measure every row (:func:`fidelity_rows`) and write ``out``
    (JSON) and its ``.md`` report; returns the result."""
    train = corpus_split(None, "train")
    test = corpus_split(None, "test", config.eval_proteins)
    if teacher is None:
        teacher = Path(run_dir) / "teacher"
        if (teacher / "config.json").exists():
            raise InputError(
                f"{teacher} holds a trained teacher already: pass --teacher {teacher} to measure it, or "
                "remove it to train a new one"
            )
        training = train_esm_teacher(train, teacher, teacher_config or EsmTeacherConfig(), log=log)
    else:
        path = Path(teacher) / "training.json"
        training = json.loads(path.read_text()) if path.exists() else {}
    rows = fidelity_rows(teacher, train, test, config, run_dir=run_dir, log=log)
    result = {
        "settings": asdict(config),
        "teacher_dir": str(teacher),
        "teacher": training,
        "rows": rows,
        "targets": targets(rows),
    }
    write_results(out, result, format_report(result, command))
    return result
