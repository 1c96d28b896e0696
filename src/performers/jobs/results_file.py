"""``results.json``: the metrics a command printed, each beside its baseline on the same data.

Every command that reports a metric on the user's data (``train``, ``evaluate``, ``finetune``,
``score`` with a target) writes one ``results.json`` next to what it prints, so that a number is
never read without what a trivial predictor gets: the unigram model of the training split for
language-model accuracy and perplexity, the majority class for classification, the training mean
for regression, BLOSUM62 for variant effects. One schema for all of them::

    {"format": 1, "command": "evaluate", "metrics": {"accuracy": {"value": 0.17, "baseline": 0.08,
     "baseline_name": "unigram (training split)", "higher_is_better": true, "count": 51234}},
     ...details (model, data, settings)}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from performers.utils.files import atomic_write

__all__ = ["RESULTS_FORMAT", "Metric", "format_metric", "read_results", "write_results"]

RESULTS_FORMAT = 1


@dataclass(frozen=True)
class Metric:
    """One measured number and what a trivial predictor scores on the same data.

    ``baseline`` is ``None`` only where no trivial predictor defines the metric (say so in
    ``baseline_name``, e.g. ``"none: a constant predictor has no rank correlation"``).
    ``count``: the residues, proteins or variants the metric was computed over.
    """

    value: float
    baseline: float | None
    baseline_name: str
    higher_is_better: bool = True
    count: int | None = None


def _finite_or_none(x: float | None) -> float | None:
    # JSON has no NaN/inf; a metric that is undefined on the data is written as null.
    return None if x is None or not math.isfinite(float(x)) else float(x)


def write_results(path: str | Path, *, command: str, metrics: Mapping[str, Metric], **details: Any) -> Path:
    """Write ``results.json`` atomically: ``metrics`` by name, and ``details`` (JSON-able) beside them."""
    payload: dict[str, Any] = {"format": RESULTS_FORMAT, "command": command, "metrics": {}}
    for name, metric in metrics.items():
        entry = asdict(metric)
        entry["value"] = _finite_or_none(metric.value)
        entry["baseline"] = _finite_or_none(metric.baseline)
        payload["metrics"][name] = entry
    payload.update(details)
    path = Path(path)
    text = json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def read_results(path: str | Path) -> dict[str, Any]:
    """The dictionary :func:`write_results` wrote."""
    return json.loads(Path(path).read_text())


def format_metric(name: str, metric: Metric, *, percent: bool = False) -> str:
    """``"accuracy 16.85% (unigram (training split) 7.91%)"`` — how commands print a metric."""

    def show(x: float | None) -> str:
        if x is None or not math.isfinite(x):
            return "n/a"
        return f"{100 * x:.2f}%" if percent else f"{x:.4g}"

    return f"{name} {show(metric.value)} ({metric.baseline_name} {show(metric.baseline)})"
