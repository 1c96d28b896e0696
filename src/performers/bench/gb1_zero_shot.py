"""Zero-shot fitness prediction on GB1 (FLIP): a masked language model scores every variant
against the wild type, without seeing a single fitness value, and the score is compared with the
measured fitness (Spearman), next to two baselines.

* **model** — the masked-marginal log-odds of :func:`performers.jobs.scoring.variant_effects`
  (each mutated position masked on its own, as ESM; causal models: the log-likelihood ratio);
* **BLOSUM62** — the sum of the substitution scores ``BLOSUM62[wt_i, mut_i]`` of the mutations;
* **random** — scores drawn at random: the mean and spread of Spearman over ``draws`` seeds,
  what "no signal" looks like at this number of variants.

The variants are FLIP's ``sampled`` GB1 set shipped with the package (8,733 variants at V39,
D40, G41, V54); the wild type is its record with V39 D40 G41 V54
(``performers/data/proteins/flip_gb1/wildtype.fasta``). Spearman is reported over all variants
and over FLIP's test split (1,745 variants, the one fine-tuned models are scored on).

``performers bench gb1-zero-shot`` runs :func:`run_gb1_zero_shot`: it loads a trained model and
writes ``gb1_zero_shot.json`` and ``gb1_zero_shot.md`` (:func:`write_report`).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from performers.bench.results import write_results
from performers.jobs import load_trained
from performers.jobs.scoring import find_mutations, variant_effects
from performers.proteins import FastaRecord, ProteinTokenizer, read_fasta
from performers.proteins.data import split_of
from performers.proteins.substitution import blosum62
from performers.training import spearman
from performers.utils import shipped_data

__all__ = [
    "GB1Variants",
    "blosum62_scores",
    "format_report",
    "gb1_variants",
    "gb1_zero_shot",
    "run_gb1_zero_shot",
    "write_report",
]


@dataclass(frozen=True)
class GB1Variants:
    """FLIP's GB1 ``sampled`` variants: the wild type, the variant records (in file order), their
    measured fitness ``(N,)`` float64 and whether each is in FLIP's test split ``(N,)`` bool."""

    wildtype: FastaRecord
    records: list[FastaRecord]
    fitness: torch.Tensor
    test: torch.Tensor


def gb1_variants(limit: int | None = None) -> GB1Variants:
    """The GB1 variants shipped with the package (module docstring); ``limit``: the first
    ``limit`` of them in file order (None: all 8,733)."""
    (wildtype,) = list(read_fasta(shipped_data("proteins", "flip_gb1", "wildtype.fasta")))
    records = list(read_fasta(shipped_data("proteins", "flip_gb1", "sampled.fasta.gz")))[:limit]
    fitness = torch.tensor([float(r.fields["TARGET"]) for r in records], dtype=torch.float64)
    test = torch.tensor([split_of(r) == "test" for r in records], dtype=torch.bool)
    return GB1Variants(wildtype, records, fitness, test)


def blosum62_scores(wildtype: str, sequences: list[str]) -> list[float]:
    """Sum of ``BLOSUM62[wt, mut]`` over each variant's mutations (0 for the wild type)."""
    matrix = blosum62()
    return [float(sum(matrix[m.wildtype, m.mutant] for m in find_mutations(wildtype, s))) for s in sequences]


def gb1_zero_shot(
    model: nn.Module,
    tokenizer: ProteinTokenizer,
    *,
    draws: int = 100,
    max_tokens: int = 16384,
    progress: bool = True,
) -> dict:
    """Spearman of the model's zero-shot scores, BLOSUM62 and random scores against GB1 fitness.

    Returns:
        ``{"variants", "test_variants", "rows": [{"method", "spearman_all", "spearman_test",
        "spearman_sd"?}], "scores": {id: model score}}``.
    """
    variants = gb1_variants()
    wildtype, records, fitness, test = variants.wildtype, variants.records, variants.fitness, variants.test
    effects = variant_effects(model, tokenizer, wildtype, records, max_tokens=max_tokens, progress=progress)
    model_scores = torch.tensor([row["score"] for row in effects], dtype=torch.float64)
    substitution = torch.tensor(
        blosum62_scores(wildtype.sequence, [r.sequence for r in records]), dtype=torch.float64
    )

    def row(method: str, scores: torch.Tensor) -> dict:
        return {
            "method": method,
            "spearman_all": spearman(scores, fitness),
            "spearman_test": spearman(scores[test], fitness[test]),
        }

    generator = torch.Generator().manual_seed(0)
    random = [
        row("random", torch.randn(len(records), generator=generator, dtype=torch.float64))
        for _ in range(draws)
    ]
    random_row = {
        "method": f"random scores (mean of {draws} draws)",
        "spearman_all": statistics.fmean(r["spearman_all"] for r in random),
        "spearman_test": statistics.fmean(r["spearman_test"] for r in random),
        "spearman_sd": statistics.stdev(r["spearman_test"] for r in random),
    }
    return {
        "variants": len(records),
        "test_variants": int(test.sum()),
        "method": effects[0]["method"] if effects else None,
        "rows": [
            row(f"model ({effects[0]['method']})", model_scores),
            row("BLOSUM62 sum", substitution),
            random_row,
        ],
        "scores": {r["id"]: r["score"] for r in effects},
    }


def format_report(result: dict, command: str, model_dir: str) -> str:
    """A markdown table of :func:`gb1_zero_shot`'s result with the command that made it."""
    lines = [
        "# Zero-shot GB1: variant scores of a protein language model against measured fitness",
        "",
        f"Command: `{command}`; model `{model_dir}`. {result['variants']:,} variants of FLIP's GB1 `sampled` "
        f"set (test split: {result['test_variants']:,}); Spearman correlation between each score and the "
        "measured fitness (no fitness value is used to make the scores).",
        "",
        "| scores | Spearman, all variants | Spearman, test split |",
        "|---|---:|---:|",
    ]
    for row in result["rows"]:
        spread = f" (sd {row['spearman_sd']:.3f})" if "spearman_sd" in row else ""
        lines.append(f"| {row['method']} | {row['spearman_all']:.3f} | {row['spearman_test']:.3f}{spread} |")
    return "\n".join(lines) + "\n"


def write_report(result: dict, out_dir: str | Path, command: str, model_dir: str) -> Path:
    """Write ``gb1_zero_shot.json`` (``result``) and ``gb1_zero_shot.md`` (:func:`format_report`)
    into ``out_dir``; returns the JSON's path."""
    markdown = format_report(result, command, model_dir)
    return write_results(Path(out_dir) / "gb1_zero_shot.json", result, markdown)


def run_gb1_zero_shot(
    model_dir: str | Path,
    *,
    out_dir: str | Path,
    command: str,
    attention: str | None = None,
    draws: int = 100,
    max_tokens: int = 16384,
) -> dict:
    """Load the trained model in ``model_dir`` (``attention`` overrides its backend), score GB1
    (:func:`gb1_zero_shot`) and write the report (:func:`write_report`); returns the result."""
    model, tokenizer = load_trained(model_dir, attention=attention)
    result = gb1_zero_shot(model, tokenizer, draws=draws, max_tokens=max_tokens)
    write_report(result, out_dir, command, str(model_dir))
    return result
