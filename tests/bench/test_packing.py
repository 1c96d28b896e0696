"""``performers bench packing`` on a tiny budget: every run written, a fair comparison."""

import json
import math
import os
import random
import statistics

import pytest

from performers.bench import packing
from performers.cli import main
from performers.jobs.protein_evaluation import corpus_split
from performers.jobs.proteins import run_training
from performers.proteins import LanguageModelExamples, ProteinTokenizer
from performers.training.loader import batch_loader
from tests.helpers.results import assert_written_by_the_results_writer

RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
SIZES = ["--d-model", "16", "--layers", "1", "--heads", "2", "--d-ff", "32", "--num-features", "8"]
RUN = [*SIZES, "--steps", "3", "--batch-size", "4", "--dropout", "0", "--threads", "1", "--workers", "0"]
RUN += ["--warmup-steps", "1", "--tail", "2", "--memory-steps", "2", "--crops", "32", "64"]


CALLS: list[tuple[str, int, str | None]] = []  # (directory, steps, MALLOC_MMAP_THRESHOLD_) per run


def _in_process(variants, model_config, training, *, out_dir, evaluate, **data):
    """train_variants without the fresh process per run (seconds each here): the same training."""
    (variant,) = variants
    CALLS.append((variant.directory, training.max_steps, os.environ.get("MALLOC_MMAP_THRESHOLD_")))
    kwargs = dict(
        training=training, out_dir=out_dir / variant.directory, evaluate=evaluate, log=lambda _: None
    )
    return [run_training(variant.model_config(model_config), **kwargs, **data)]


@pytest.fixture
def fasta(tmp_path, monkeypatch):
    """Proteins of 5 to 60 residues (padding at both crops), and the cache they are prepared in.
    The runs train in this process (a spawned process per run costs ~10 s here)."""
    monkeypatch.setenv("PERFORMERS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(packing, "train_variants", _in_process)
    rng = random.Random(0)
    path = tmp_path / "mixed.fasta"
    proteins = ("".join(rng.choices(RESIDUES, k=rng.randint(5, 60))) for _ in range(24))
    path.write_text("".join(f">p{i}\n{seq}\n" for i, seq in enumerate(proteins)))
    return path


def _padded_fractions(corpus, crop: int, steps: int) -> list[float]:
    """The padding fraction of the padded batches the trainer draws (batch 4, seed 0)."""
    examples = LanguageModelExamples(
        corpus_split(corpus, "train", None), ProteinTokenizer(), task="mlm", max_length=crop
    )
    batches = batch_loader(examples, batch_size=4, seed=0)
    fractions = []
    for _ in range(steps):
        mask = next(batches)["attention_mask"]
        fractions.append(1.0 - float(mask.sum()) / mask.numel())
    return fractions


def test_tiny_packing_bench_trains_every_pair_fairly_through_the_writer(tmp_path, fasta):
    out = tmp_path / "out"
    CALLS.clear()
    args = ["bench", "packing", *RUN, "--train", str(fasta), "--valid", str(fasta), "--out", str(out)]
    assert main(args) == 0
    record = assert_written_by_the_results_writer(out / "packing.json")
    keys = [(r["crop"], r["attention"], r["layout"]) for r in record["runs"]]
    # Every (crop, attention) pair, padded and packed, in interleaved A/B order.
    assert keys == [
        (32, "favor", "padded"),
        (32, "favor", "packed"),
        (32, "exact", "packed"),
        (32, "exact", "padded"),
        (64, "favor", "padded"),
        (64, "favor", "packed"),
        (64, "exact", "packed"),
        (64, "exact", "padded"),
    ]
    (corpus,) = (tmp_path / "cache" / "prepared").iterdir()
    runs = {(r["crop"], r["attention"], r["layout"]): r for r in record["runs"]}
    for (crop, attention, layout), run in runs.items():
        metrics = [
            json.loads(line) for line in (out / f"{attention}-{crop}-{layout}" / "metrics.jsonl").open()
        ]
        assert run["steps"] == len(metrics) == 3
        assert math.isclose(run["final_loss"], (metrics[1]["loss"] + metrics[2]["loss"]) / 2)
        assert run["tokens_per_second"] == statistics.median(m["tokens_per_second"] for m in metrics[1:])
        if layout == "padded":  # what the trainer logs is what the padded collate makes
            expected = _padded_fractions(corpus, crop, 3)
            assert [m["padding_fraction"] for m in metrics] == pytest.approx(expected, abs=1e-12)
            assert run["padding_fraction"] == pytest.approx(sum(expected) / 3)
            assert max(expected) > 0.1  # mixed lengths: the comparison has padding to remove
            packed = runs[crop, attention, "packed"]
            assert packed["padding_fraction"] == 0  # one row, the proteins end to end
            # The same proteins: the same real tokens after each step, the same step-1 loss.
            assert [c[0] for c in packed["curve"]] == [c[0] for c in run["curve"]]
            assert packed["curve"][0][1] == pytest.approx(run["curve"][0][1], rel=1e-5)
    assert record["speedups"]["favor@64"] == pytest.approx(
        runs[64, "favor", "packed"]["tokens_per_second"] / runs[64, "favor", "padded"]["tokens_per_second"]
    )
    report = (out / "packing.md").read_text()
    assert "| 64 | exact | packed |" in report and "not measured (crop 1024 not in --crops)" in report
    assert (out / "packing.png").exists()
    # Each timed run (3 steps, the allocator as it is) is followed by its memory run (2 steps,
    # allocations returned to the OS), in the same interleaved order; the environment is restored.
    expected_calls = []
    for crop, attention, layout in keys:
        expected_calls += [
            (f"{attention}-{crop}-{layout}", 3, None),
            (f"{attention}-{crop}-{layout}-memory", 2, "65536"),
        ]
    assert CALLS == expected_calls and "MALLOC_MMAP_THRESHOLD_" not in os.environ
    assert record["memory_steps"] == 2 and "timed run's growth" in report


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--warmup-steps", "3"], "--warmup-steps must be in [0, --steps 3)"),
        (["--crops", "2"], "--crops: each must be >= 3"),
        (["--max-length", "64"], "--max-length 64: give the crops to compare as --crops"),
        (["--tail", "0"], "--tail must be >= 1"),
        (["--memory-steps", "0"], "--memory-steps must be >= 1"),
        (["--concatenate"], "--concatenate: packing lays whole proteins in rows"),
    ],
)
def test_bad_options_are_one_error_line(extra, match, capsys):
    assert main(["bench", "packing", *RUN, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("performers bench packing: error: ") and match in err and err.count("\n") == 1


def test_the_target_is_met_or_missed_with_its_numbers():
    lines = packing._target_lines(
        {"favor@1024": 1.83, "exact@1024": 1.79, "favor@256": 0.9}, ("favor", "exact")
    )
    assert lines[0].endswith("favor: **met** (1.83×).") and lines[1].endswith("exact: **missed** (1.79×).")
