"""Pseudo-log-likelihood throughput: the masked copies of all proteins packed together by the
token budget, against one protein at a time (how ``performers score`` ran before).

Both compute the same thing — ``Σ_i log p(r_i | x with r_i masked)``, one masked copy of each
protein per residue — on the same model, proteins and ``max_tokens``:

* **per protein** — :func:`performers.jobs.scoring.per_protein_pseudo_log_likelihoods`: each
  protein's copies batched by the token budget on their own, so every protein ends in a partly
  filled batch and a short protein's copies make one small batch;
* **packed** — :func:`performers.jobs.pseudo_likelihood.pseudo_log_likelihoods`: the copies of
  all the proteins, longest first, cut into batches of ``max_tokens`` padded tokens.

Residues/s is residues scored per second of the call (one masked copy per residue). The largest
difference between the two results is recorded beside the speed: they must agree to float
rounding. The model is :data:`performers.jobs.DEMO_MODEL` (the demo's size) with random weights
(seeded; weights change no timing) unless a model directory is given; the proteins are the first
ones of the shipped RefSeq corpus that the model's positions fit (mixed lengths). The two
schedules alternate over ``repeats`` rounds after a warm-up on the shortest protein, and each
reports its best round.

Run::

    performers bench pll --out docs/results/pll.json

(writes ``pll.json`` and ``pll.md``; options in ``performers.cli.bench.pll``).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from performers.bench.results import write_results
from performers.jobs import DEMO_MODEL
from performers.jobs.hf_protein_lm import protein_lm_from_directory
from performers.jobs.protein_lm import ProteinLM, as_protein_lm
from performers.jobs.pseudo_likelihood import pseudo_log_likelihoods
from performers.jobs.scoring import per_protein_pseudo_log_likelihoods
from performers.models import build_model
from performers.proteins import ProteinTokenizer, read_fasta
from performers.utils import shipped_data

__all__ = ["SCHEDULES", "demo_model", "format_report", "measure_pll", "run_pll_bench", "shipped_proteins"]

SCHEDULES = {"per protein": per_protein_pseudo_log_likelihoods, "packed": pseudo_log_likelihoods}


def demo_model(seed: int = 0) -> ProteinLM:
    """A masked LM of :data:`~performers.jobs.DEMO_MODEL`'s size with random weights, in eval
    mode (dropout off)."""
    torch.manual_seed(seed)
    model = build_model(replace(DEMO_MODEL, dropout=0.0), "mlm").eval()
    return as_protein_lm(model, ProteinTokenizer())


def shipped_proteins(count: int, max_residues: int, min_residues: int = 20) -> list[tuple[str, str]]:
    """The first ``count`` proteins of the shipped RefSeq corpus with ``min_residues`` to
    ``max_residues`` residues, as ``(id, sequence)``."""
    proteins = []
    for record in read_fasta(shipped_data("proteins", "mlm_corpus_refseq17.fasta.gz")):
        if min_residues <= len(record.sequence) <= max_residues:
            proteins.append((record.id, record.sequence))
            if len(proteins) == count:
                break
    return proteins


def measure_pll(lm: ProteinLM, sequences: list[str], *, max_tokens: int, repeats: int = 1) -> dict:
    """Time both schedules (module docstring) on ``sequences``; returns ``{"rows": [{"schedule",
    "seconds", "residues_per_second"}], "speedup", "max_abs_difference",
    "max_relative_difference", "pseudo_log_likelihoods": {schedule: [...]}}``."""
    shortest = min(sequences, key=len)
    for schedule in SCHEDULES.values():  # warm-up: first-call allocations and kernel choices
        schedule(lm, None, [shortest], max_tokens=max_tokens)
    best = dict.fromkeys(SCHEDULES, float("inf"))
    results: dict[str, list[float]] = {}
    for _ in range(repeats):
        for name, schedule in SCHEDULES.items():
            start = time.perf_counter()
            results[name] = schedule(lm, None, sequences, max_tokens=max_tokens)
            best[name] = min(best[name], time.perf_counter() - start)
    residues = sum(map(len, sequences))
    rows = [
        {"schedule": name, "seconds": seconds, "residues_per_second": residues / seconds}
        for name, seconds in best.items()
    ]
    old, new = results["per protein"], results["packed"]
    differences = [abs(a - b) for a, b in zip(old, new, strict=True)]
    return {
        "rows": rows,
        "speedup": best["per protein"] / best["packed"],
        "max_abs_difference": max(differences),
        "max_relative_difference": max(d / max(abs(a), 1e-30) for d, a in zip(differences, old, strict=True)),
        "pseudo_log_likelihoods": results,
    }


def format_report(record: dict) -> str:
    """The markdown report of :func:`run_pll_bench`'s record."""
    s = record["settings"]
    lengths = s["lengths"]
    lines = [
        "# Pseudo-log-likelihood: masked copies packed across proteins vs one protein at a time",
        "",
        f"Command: `{record['command']}`",
        "",
        f"Model: {s['model']}; {s['dtype']} on {s['device']}, {s['threads']} thread(s), --max-tokens "
        f"{s['max_tokens']}. {len(lengths)} shipped RefSeq proteins of {min(lengths)}-{max(lengths)} "
        f"residues ({sum(lengths)} in all, one masked copy each); best of {s['repeats']} round(s) "
        "after a warm-up. `per protein`: each protein's copies batched on their own (how `performers "
        "score` ran before); `packed`: the copies of all proteins cut into batches of --max-tokens "
        "padded tokens.",
        "",
        "| schedule | seconds | residues/s |",
        "|---|---:|---:|",
    ]
    for row in record["rows"]:
        lines.append(f"| {row['schedule']} | {row['seconds']:.3f} | {row['residues_per_second']:.0f} |")
    lines += [
        "",
        f"Speed-up (packed over per protein): **{record['speedup']:.2f}×**. Largest difference of "
        f"the pseudo-log-likelihoods: {record['max_abs_difference']:.3g} (relative "
        f"{record['max_relative_difference']:.3g}), float rounding.",
    ]
    return "\n".join(lines) + "\n"


def run_pll_bench(
    *,
    out: str | Path,
    command: str,
    model_dir: str | Path | None = None,
    proteins: int = 24,
    max_residues: int = 254,
    max_tokens: int = 16384,
    repeats: int = 1,
) -> dict:
    """Measure both schedules (:func:`measure_pll`) on ``proteins`` shipped proteins of at most
    ``max_residues`` residues with the demo-sized random model (or the masked model in
    ``model_dir``), and write ``out`` (JSON) and the markdown report beside it; returns the
    record."""
    if model_dir is None:
        lm, model = demo_model(), "DEMO_MODEL size (d_model 128, 2 layers, 4 heads, M = 64), random weights"
    else:
        lm, model = protein_lm_from_directory(model_dir), str(model_dir)
    if lm.residue_limit is not None:
        max_residues = min(max_residues, lm.residue_limit)
    pairs = shipped_proteins(proteins, max_residues)
    sequences = [sequence for _, sequence in pairs]
    measured = measure_pll(lm, sequences, max_tokens=max_tokens, repeats=repeats)
    parameter = next(iter(lm.model.parameters()))  # both adapters keep their module as .model
    record = {
        "command": command,
        "settings": {
            "model": model,
            "dtype": str(parameter.dtype).removeprefix("torch."),
            "device": str(lm.device),
            "threads": torch.get_num_threads(),
            "max_tokens": max_tokens,
            "repeats": repeats,
            "proteins": [name for name, _ in pairs],
            "lengths": [len(s) for s in sequences],
        },
        **measured,
    }
    write_results(out, record, format_report(record))
    return record
