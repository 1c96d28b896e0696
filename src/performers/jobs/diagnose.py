"""Will FAVOR attention work for this model on this data, and with how many features?

:func:`diagnose_model` runs a model with exact attention on a data sample, captures the q/k/v
of every layer (:mod:`~performers.jobs.diagnose_capture`) and calls :func:`diagnose`:
for each layer, head, kernel and feature count ``M`` it measures the relative error of the
FAVOR attention output against exact attention over several projection draws
(:mod:`~performers.jobs.diagnose_measure`), puts the theory's prediction next to it
(:mod:`~performers.jobs.diagnose_theory`), finds the smallest ``M`` meeting a tolerance
and turns it all into a recommendation (:mod:`~performers.jobs.diagnose_verdict`).
Reports: :mod:`~performers.jobs.diagnose_report`.

Example (a notebook)::

    from performers.jobs import diagnose_model
    report = diagnose_model("runs/mine", data="proteins.fasta", limit=16, tolerance=0.05)
    report.recommendation.message, report.rows[0]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from performers.jobs.diagnose_capture import (
    DiagnoseError,
    capture_hf,
    capture_performers,
    model_kind,
    protein_batch,
    read_sentences,
)
from performers.jobs.diagnose_measure import CapturedAttention, logit_statistics, measure_errors
from performers.jobs.diagnose_theory import (
    THEORY_KERNELS,
    favor_plus_plus_a,
    sample_queries,
    theory_constants,
)
from performers.jobs.diagnose_verdict import ErrorRow, HeadVerdict, Recommendation, recommend, verdicts

__all__ = [
    "DEFAULT_FEATURES",
    "DEFAULT_KERNELS",
    "DiagnoseError",
    "DiagnosisReport",
    "diagnose",
    "diagnose_model",
]

DEFAULT_KERNELS = THEORY_KERNELS
DEFAULT_FEATURES = (16, 32, 64, 128, 256, 512, 1024)


@dataclass
class DiagnosisReport:
    """The result of :func:`diagnose`, JSON-ready through :meth:`to_dict`.

    Attributes:
        settings: the options and the data (model, sequences, tokens, ...).
        layers: per layer: heads, head size, causal, scale and per-head logit statistics
            (:func:`~performers.jobs.diagnose_measure.logit_statistics`, plus FAVOR++'s
            mean ``A``).
        rows: one :class:`ErrorRow` per (layer, head or ``"all"``, kernel, M).
        heads: one :class:`HeadVerdict` per (layer, head, kernel): smallest M and why not.
        recommendation: the :class:`Recommendation` for the whole model.
    """

    settings: dict[str, Any]
    layers: list[dict[str, Any]]
    rows: list[ErrorRow]
    heads: list[HeadVerdict]
    recommendation: Recommendation
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "recommendation": self.recommendation.to_dict(),
            "layers": self.layers,
            "heads": [h.to_dict() for h in self.heads],
            "rows": [r.to_dict() for r in self.rows],
        }


def _check_options(
    kernels: Sequence[str], feature_counts: Sequence[int], tolerance: float, draws: int
) -> None:
    unknown = [k for k in kernels if k not in THEORY_KERNELS]
    if unknown or not kernels:
        raise DiagnoseError(f"--kernels: {unknown or 'none given'}; choose from {', '.join(THEORY_KERNELS)}")
    if not feature_counts or any(isinstance(m, bool) or int(m) != m or m < 1 for m in feature_counts):
        raise DiagnoseError(f"--features: expected integers >= 1, got {list(feature_counts)}")
    if not 0 < tolerance:
        raise DiagnoseError(f"--tolerance: expected a relative error > 0, got {tolerance}")
    if draws < 2:
        raise DiagnoseError(f"--draws: expected >= 2 (the spread needs two draws), got {draws}")


def diagnose(
    layers: Sequence[CapturedAttention],
    *,
    kernels: Sequence[str] = DEFAULT_KERNELS,
    feature_counts: Sequence[int] = DEFAULT_FEATURES,
    tolerance: float = 0.05,
    draws: int = 4,
    projection: str = "orthogonal",
    max_queries: int = 32,
    seed: int = 0,
    settings: dict[str, Any] | None = None,
) -> DiagnosisReport:
    """Measured vs predicted FAVOR error of every layer and head of captured attention.

    Args:
        layers: one :class:`CapturedAttention` per attention layer (``(B, H, L, D)`` tensors).
        kernels: estimators among :data:`DEFAULT_KERNELS` (``softmax-hyperbolic`` at ``M``
            has ``M`` projections, ``2M`` features).
        feature_counts: the ``M`` to try (ascending).
        tolerance: the largest acceptable relative error ``‖ô − o‖/‖o‖`` of a head's output
            (mean over draws).
        draws: projection draws per ``M`` (the same for every kernel).
        projection: ``"orthogonal"`` (what models use by default) or ``"iid"`` (the theory's
            assumption; orthogonal comes out at or below it).
        max_queries: real query positions per sequence for the theory and the statistics
            (both cost ``O(L²)`` per query); the measurement uses every real query.
        seed: of the projections and of the query sample.
        settings: recorded in the report (the model, the data).

    Returns:
        A :class:`DiagnosisReport`.
    """
    feature_counts = sorted(int(m) for m in feature_counts)
    _check_options(kernels, feature_counts, tolerance, draws)
    if not layers:
        raise DiagnoseError("MODEL: no attention layer was captured")
    generator = torch.Generator().manual_seed(seed)
    rows: list[ErrorRow] = []
    layer_info: list[dict[str, Any]] = []
    for index, layer in enumerate(layers):
        keep = ~layer.padding
        if not bool(keep.any()):
            raise DiagnoseError("--data: every position is padding; no token to diagnose")
        queries = sample_queries(keep, max_queries, generator)
        qs, ks = layer.scaled
        stats = logit_statistics(layer, queries)
        a_param = favor_plus_plus_a(qs, ks, causal=layer.causal, key_padding_mask=layer.padding)
        real_rows = keep.any(-1)
        for h, row in enumerate(stats):
            row["favor_pp_a"] = float(a_param[real_rows, h].mean())
        layer_info.append(
            {
                "layer": index,
                "heads": layer.q.shape[1],
                "head_dim": layer.q.shape[-1],
                "causal": layer.causal,
                "scale": layer.scale,
                "statistics": stats,
            }
        )
        measured = measure_errors(
            layer,
            kernels=kernels,
            feature_counts=feature_counts,
            draws=draws,
            projection=projection,
            generator=generator,
        )
        for kernel in kernels:
            num, den = theory_constants(
                qs,
                ks,
                layer.v,
                kernel=kernel,
                queries=queries,
                key_padding_mask=layer.padding,
                causal=layer.causal,
                a_param=a_param if kernel == "favor++" else None,
            )
            per_head = num.clamp_min(0) / den.clamp_min(1e-300)
            whole = float(num.clamp_min(0).sum() / den.sum().clamp_min(1e-300))
            for m in feature_counts:
                sq_num, sq_den = measured[(kernel, m)]
                errors = (sq_num / sq_den.clamp_min(1e-300)).sqrt()  # (draws, H)
                for h in range(errors.shape[1]):
                    rows.append(ErrorRow.of(index, h, kernel, m, errors[:, h], float(per_head[h] / m) ** 0.5))
                layer_errors = (sq_num.sum(-1) / sq_den.sum().clamp_min(1e-300)).sqrt()
                rows.append(ErrorRow.of(index, "all", kernel, m, layer_errors, (whole / m) ** 0.5))
    heads = verdicts(rows, layer_info, tolerance, feature_counts)
    recommendation = recommend(heads, kernels, feature_counts, tolerance)
    options = {
        "kernels": list(kernels),
        "feature_counts": feature_counts,
        "tolerance": tolerance,
        "draws": draws,
        "projection": projection,
        "max_queries": max_queries,
        "seed": seed,
    }
    return DiagnosisReport({**(settings or {}), **options}, layer_info, rows, heads, recommendation)


def _load_performers(path: Path, data: str | Path | None, limit: int, max_length: int | None, device):
    from performers.jobs.proteins import load_trained
    from performers.proteins import read_fasta

    if data is None:
        raise DiagnoseError("--data: a performers (protein) model needs a FASTA file of proteins")
    records = [r.sequence for r in read_fasta(data)][:limit]
    if not records:
        raise DiagnoseError(f"--data {data}: no protein in the FASTA file")
    model, tokenizer = load_trained(path, attention="favor")  # the hooked module runs; output exact
    model.to(device)
    limit_positions = model.config.max_position_embeddings
    length = min(max_length or limit_positions, limit_positions)
    input_ids, attention_mask = protein_batch(records, tokenizer, length)
    layers = capture_performers(model, input_ids.to(device), attention_mask.to(device))
    return layers, {"sequences": len(records), "max_length": length}


def _load_hf(path: Path, data: str | Path | None, limit: int, max_length: int | None, device):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from performers.integrations.transformers import load_hf_model

    if data is not None and _is_fasta(data):
        return _load_hf_proteins(path, data, limit, max_length, device)
    if data is None:
        from performers.text import load_stsb

        first, second, _ = load_stsb("test")
        sentences = list(dict.fromkeys(first + second))  # distinct, in file order
        source = "STS-B test sentences (shipped)"
    else:
        sentences = read_sentences(data)
        source = str(data)
    sentences = sentences[:limit]
    model, tokenizer = load_hf_model(path)
    if tokenizer is None:
        raise DiagnoseError(f"MODEL {path}: no tokenizer saved with the model (needed to read text)")
    batch = tokenizer(
        sentences, padding=True, truncation=True, max_length=max_length or 128, return_tensors="pt"
    )
    model.to(device)
    layers = capture_hf(model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
    return layers, {"sequences": len(sentences), "data_source": source, "max_length": max_length or 128}


def _is_fasta(data: str | Path) -> bool:
    """A file whose first non-blank character is ``>``: proteins, not sentences."""
    try:
        with open(data, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.strip():
                    return line.lstrip().startswith(">")
    except OSError:
        return False  # read_sentences names the file
    return False


def _load_hf_proteins(path: Path, data: str | Path, limit: int, max_length: int | None, device):
    """A Hugging Face protein model (ESM, ProtBert, ProtGPT2) on a FASTA file: its tokenizer's own
    layout (:meth:`~performers.jobs.protein_models.ProteinModel.encode`), each protein cropped to
    its first ``max_length - 2`` residues (default 128 tokens, as for text)."""
    from performers.jobs.protein_models import load_protein_model
    from performers.proteins import read_fasta

    records = [r.sequence for r in read_fasta(data)][:limit]
    if not records:
        raise DiagnoseError(f"--data {data}: no protein in the FASTA file")
    loaded = load_protein_model(path)
    length = max_length or 128
    if length < 3:
        raise DiagnoseError(f"--max-length: expected >= 3 (<cls>, a residue, <eos>), got {length}")
    input_ids, attention_mask = loaded.encode([sequence[: length - 2] for sequence in records])
    loaded.model.to(device)
    layers = capture_hf(loaded.model, input_ids.to(device), attention_mask.to(device))
    return layers, {"sequences": len(records), "data_source": str(data), "max_length": length}


def diagnose_model(
    model: str | Path,
    *,
    data: str | Path | None = None,
    limit: int = 64,
    max_length: int | None = None,
    device: str | torch.device = "cpu",
    **options: Any,
) -> DiagnosisReport:
    """:func:`diagnose` of a model directory on a data sample.

    Args:
        model: a performers model directory (``performers train``'s run directory or a
            ``save_pretrained`` one with ``tokenizer.json``) or a Hugging Face model directory
            (``save_pretrained``, with its tokenizer).
        data: performers models: a FASTA file (required); Hugging Face models: a text file with
            one sentence per line (default: the shipped STS-B test sentences), or, for a
            Hugging Face protein model (ESM, ProtBert, ProtGPT2), a FASTA file of proteins.
        limit: the first ``limit`` proteins or sentences.
        max_length: tokens per sequence (proteins cropped at the start; default the model's
            maximum, 128 for a Hugging Face protein model; text truncated, default 128).
        device: where the model runs to capture q/k/v; the error measurements then run on the
            CPU in float64, as for a model run there.
        **options: of :func:`diagnose` (kernels, feature_counts, tolerance, draws, ...).

    Raises:
        DiagnoseError: unusable inputs (named): no data, an empty FASTA, a model family without
            attention hooks, ...
    """
    path = Path(model)
    if limit < 1:
        raise DiagnoseError(f"--limit: expected >= 1, got {limit}")
    kind = model_kind(path)
    load = _load_performers if kind == "performers" else _load_hf
    layers, info = load(path, data, limit, max_length, device)
    # q/k/v measured on the CPU whatever ran the model (the projections are drawn there).
    layers = [
        replace(layer, q=layer.q.cpu(), k=layer.k.cpu(), v=layer.v.cpu(), padding=layer.padding.cpu())
        for layer in layers
    ]
    padding = layers[0].padding
    settings = {
        "model": str(model),
        "model_kind": kind,
        "data": None if data is None else str(data),
        "tokens": int((~padding).sum()),
        "layers": len(layers),
        **info,
    }
    return diagnose(layers, settings=settings, **options)
