"""What every bench's test checks of its output: written by the one results writer."""

from __future__ import annotations

import json
from pathlib import Path

from performers.bench.environment import environment


def assert_written_by_the_results_writer(json_path: str | Path, markdown_path: str | Path | None = None):
    """``json_path`` holds a JSON object with the environment it was measured in, the markdown
    report is beside it (``.md``, or ``markdown_path``), and no temporary file of an atomic write
    is left in their folders. Returns the JSON."""
    json_path = Path(json_path)
    record = json.loads(json_path.read_text())
    assert set(environment()) <= set(record["environment"]), record.get("environment")
    markdown_path = json_path.with_suffix(".md") if markdown_path is None else Path(markdown_path)
    assert markdown_path.read_text().strip()
    for folder in {json_path.parent, markdown_path.parent}:
        left = [p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
        assert not left, left
    return record
