"""Helpers of the all-MiniLM-L6-v2 / STS-B experiment (performers bench compat)."""

from __future__ import annotations

import pytest
import torch

from performers.bench.compat import write_markdown
from performers.text import load_stsb
from performers.training import ranks as _ranks
from performers.training import spearman


def test_load_stsb_reads_the_shipped_splits():
    first, second, scores = load_stsb("test")
    assert len(first) == len(second) == len(scores) == 1379  # the release's counts (readme.txt)
    assert float(scores.min()) >= 0 and float(scores.max()) <= 5
    assert first[0] == "A girl is styling her hair." and float(scores[0]) == 2.5
    assert len(load_stsb("train")[0]) == 5749
    with pytest.raises(FileNotFoundError):
        load_stsb("nope")


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 6, (200,), generator=generator).double()  # many ties
    y = x + torch.randn(200, generator=generator, dtype=torch.float64)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x.numpy(), y.numpy()).statistic, abs=1e-12)
    assert torch.equal(_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])), torch.tensor([3.5, 1, 3.5, 2]).double())


def test_write_markdown(tmp_path):
    rows = [
        {
            "kernel": "softmax",
            "num_features": 64,
            "cosine_before": 0.5,
            "cosine_before_min": 0.1,
            "spearman_before": 70.0,
        },
        {
            "kernel": "relu",
            "num_features": 256,
            "cosine_before": 0.5,
            "cosine_before_min": 0.1,
            "spearman_before": 70.0,
            "cosine_after": 0.9,
            "cosine_after_min": 0.5,
            "spearman_after": 81.0,
        },
    ]
    results = {
        "seconds": 60.0,
        "threads": 1,
        "torch": "x",
        "model": "m",
        "data": "d",
        "train_sentences": 10,
        "original_spearman": 82.0,
        "rows": rows,
        "distill": {"steps": 1, "batch_size": 2, "learning_rate": 1e-4, "warmup_steps": 1},
    }
    write_markdown(results, tmp_path / "r.md", "performers bench compat")
    text = (tmp_path / "r.md").read_text()
    assert "`performers bench compat`" in text
    assert "| relu | 256 |" in text and "| -1.00 | yes |" in text
    assert "not distilled" in text
