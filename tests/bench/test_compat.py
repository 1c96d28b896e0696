"""Backward compatibility (performers.bench.compat): the helpers of the all-MiniLM-L6-v2 / STS-B
experiment (performers bench compat) and the protein experiment (performers bench
proteins-backcompat) on a tiny budget."""

from __future__ import annotations

import pytest
import torch

from performers.bench.compat import write_compat
from performers.cli import main
from performers.jobs import evaluate_model
from performers.models import from_pretrained
from performers.proteins import ProteinTokenizer, default_corpus, read_split
from performers.text import load_stsb
from performers.training import ranks as _ranks
from performers.training import spearman
from tests.cli.test_proteins import TINY
from tests.helpers.results import assert_written_by_the_results_writer


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
    assert write_compat(results, tmp_path, "performers bench compat") == tmp_path / "compat.json"
    assert (
        assert_written_by_the_results_writer(tmp_path / "compat.json")["environment"]["torch"]
        == torch.__version__
    )
    text = (tmp_path / "compat.md").read_text()
    assert "`performers bench compat`" in text
    assert "| relu | 256 |" in text and "| -1.00 | yes |" in text
    assert "not distilled" in text


def test_backcompat_starts_from_the_exact_weights_and_records_the_recovery_curve(tmp_path):
    assert main(["train", *TINY, "--attention", "exact", "--out", str(tmp_path / "exact")]) == 0
    out = tmp_path / "bc"
    # The model comes from --exact: the size and FAVOR options are not options of this command.
    model_options = {"--d-model", "--layers", "--heads", "--d-ff", "--num-features"}
    run = [a for i, a in enumerate(TINY) if a not in model_options and TINY[i - 1] not in model_options]
    args = ["bench", "proteins-backcompat", *run, "--exact", str(tmp_path / "exact"), "--out", str(out)]
    assert main(args) == 0
    record = assert_written_by_the_results_writer(out / "backcompat.json")
    assert [s for s, _ in record["curves"]["converted"]] == [0, 2, 4]
    assert [s for s, _ in record["curves"]["scratch"]] == [0, 2, 4]
    # Step 0 of the converted curve is the exact model's weights run with FAVOR+, and the
    # reference is the same weights with exact attention, both on the same validation masks.
    valid = read_split(default_corpus(), "valid")[:64]
    common = dict(task="mlm", max_length=32, batch_size=4, seed=0, max_batches=10)
    tokenizer = ProteinTokenizer()
    for attention, expected in (
        ("favor", record["curves"]["converted"][0][1]),
        ("exact", record["exact"]["valid_accuracy"]),
    ):
        model = from_pretrained(tmp_path / "exact" / "final", attention=attention)
        assert evaluate_model(model, tokenizer, valid, **common)["accuracy"] == expected
    assert set(record["test"]) == {"converted, before fine-tuning", "converted", "scratch"}
    assert "FAVOR+, converted, before fine-tuning" in (out / "backcompat.md").read_text()
