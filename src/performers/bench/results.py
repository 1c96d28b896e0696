"""The one way a benchmark writes its results: a JSON record with the environment it ran on
(:func:`performers.bench.environment.environment`) and a markdown report beside it, each written
atomically (:func:`performers.utils.atomic_write`: a temporary file renamed onto the path, so a
reader never sees half a file and an interrupted run leaves the previous results intact).

Every ``performers bench`` subcommand writes through :func:`write_results`; plots and per-run
directories (checkpoints, learning curves) are written by the code that makes them.
"""

from __future__ import annotations

import json
from pathlib import Path

from performers.bench.environment import environment
from performers.utils import atomic_write

__all__ = ["write_markdown", "write_results"]


def write_results(
    json_path: str | Path,
    record: dict,
    markdown: str | None = None,
    *,
    markdown_path: str | Path | None = None,
) -> Path:
    """Write ``record`` to ``json_path`` and ``markdown`` (when given) to ``markdown_path``
    (default: ``json_path`` with the suffix ``.md``), both atomically; returns ``json_path``.

    The JSON gets an ``"environment"`` entry (:func:`environment`) unless ``record`` has one
    already (a benchmark that records it before measuring, as the GPU suite does). Values JSON
    does not know (paths, dtypes) are written as their ``str``. Parent folders are created.
    """
    json_path = Path(json_path)
    if "environment" not in record:
        record = {**record, "environment": environment()}
    text = json.dumps(record, indent=2, default=str) + "\n"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(json_path, lambda tmp: tmp.write_text(text))
    if markdown is not None:
        write_markdown(json_path.with_suffix(".md") if markdown_path is None else markdown_path, markdown)
    return json_path


def write_markdown(path: str | Path, markdown: str) -> Path:
    """Rewrite only the markdown report ``path`` (atomically), e.g. from results already written
    by :func:`write_results`; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(markdown))
    return path
