"""``performers bench pll``: both schedules measured on the same proteins, equal results, written
through the one results writer (tiny settings: a couple of short shipped proteins)."""

import pytest
import torch

from performers.cli import main
from tests.helpers.results import assert_written_by_the_results_writer


def test_pll_bench_measures_both_schedules_and_writes_through_the_writer(tmp_path, capsys):
    torch.set_num_threads(1)
    # The demo-sized model on three short proteins: well under a second.
    out = tmp_path / "pll.json"
    args = ["bench", "pll", "--proteins", "3", "--max-residues", "30", "--max-tokens", "256"]
    assert main([*args, "--threads", "1", "--out", str(out)]) == 0
    record = assert_written_by_the_results_writer(out)
    assert [row["schedule"] for row in record["rows"]] == ["per protein", "packed"]
    assert len(record["settings"]["lengths"]) == 3 and max(record["settings"]["lengths"]) <= 30
    assert record["speedup"] > 0 and record["max_relative_difference"] < 1e-5  # float32: rounding only
    old, new = record["pseudo_log_likelihoods"]["per protein"], record["pseudo_log_likelihoods"]["packed"]
    assert new == pytest.approx(old, rel=1e-5)
    markdown = out.with_suffix(".md").read_text()
    assert "| per protein |" in markdown and "Speed-up" in markdown and "performers bench pll" in markdown
    assert "speed-up" in capsys.readouterr().out
