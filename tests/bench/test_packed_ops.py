"""``performers bench packed-ops`` at tiny settings: every call timed, written by the results writer."""

import os

import pytest

from performers.bench.packed_ops import PackedOpsSettings, corpus_like_lengths
from performers.cli import main
from tests.helpers.results import assert_written_by_the_results_writer

TINY = ["--sequences", "3", "--median-length", "6", "--max-length", "12", "--heads", "1", "--head-dim", "4"]
TINY += ["--num-features", "4", "--repeats", "2", "--threads", "1"]


def test_tiny_packed_ops_bench_times_every_call_through_the_writer(tmp_path, monkeypatch):
    for name in [name for name in os.environ if name.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    out = tmp_path / "packed_ops.json"
    assert main(["bench", "packed-ops", *TINY, "--out", str(out)]) == 0
    record = assert_written_by_the_results_writer(out)
    lengths = record["lengths"]
    assert len(lengths) == 3 and all(1 <= n <= 12 for n in lengths)
    rows = {(r["direction"], r["pass"]): r for r in record["rows"]}
    assert set(rows) == {(d, p) for d in ("bidirectional", "causal") for p in ("forward", "forward+backward")}
    for r in rows.values():
        times = r["all_seconds"]
        assert all(len(times[v]) == 2 for v in ("batched", "packed", "loop"))
        for variant in ("packed", "loop"):
            # Each repeat's variant over the batched call of the same repeat; the median and range.
            paired = [t / b - 1 for t, b in zip(times[variant], times["batched"], strict=True)]
            assert r["overhead"][variant] == pytest.approx(sum(paired) / 2)
            assert r["overhead_range"][variant] == pytest.approx([min(paired), max(paired)])
    report = (tmp_path / "packed_ops.md").read_text()
    assert "| causal | forward+backward |" in report and "Bar (a packed call within 10 %" in report
    assert record["allocator"] == {} and "no `MALLOC_*` variable set" in report


def test_the_allocator_settings_are_recorded(tmp_path, monkeypatch):
    # A run with freed memory kept by the C library times the batched call differently
    # (docs/results/packing.md): the record says which allocator settings it ran under.
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4294967296")
    out = tmp_path / "packed_ops.json"
    assert main(["bench", "packed-ops", *TINY, "--out", str(out)]) == 0
    assert assert_written_by_the_results_writer(out)["allocator"] == {"MALLOC_MMAP_THRESHOLD_": "4294967296"}
    assert "`MALLOC_MMAP_THRESHOLD_=4294967296`" in (tmp_path / "packed_ops.md").read_text()


def test_default_lengths_are_protein_like():
    lengths = corpus_like_lengths(PackedOpsSettings())
    assert len(lengths) == 64 and max(lengths) <= 1024
    assert 200 <= sorted(lengths)[32] <= 340  # the shipped corpus's median is 269


def test_bad_options_are_one_error_line(capsys):
    assert main(["bench", "packed-ops", *TINY, "--repeats", "0"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("performers bench packed-ops: error: --repeats must be >= 1") and err.count("\n") == 1
    )


def test_the_kernel_option_times_that_feature_map(tmp_path, monkeypatch):
    # The generic maps (FAVOR++, relu, ...) take other paths than softmax: each call is made
    # with the kernel asked for, and the report names it.
    from performers.bench import packed_ops

    kernels = []
    real = packed_ops.favor_attention

    def spy(*args, **kwargs):
        kernels.append(kwargs["kernel"])
        return real(*args, **kwargs)

    monkeypatch.setattr(packed_ops, "favor_attention", spy)
    out = tmp_path / "relu.json"
    assert main(["bench", "packed-ops", *TINY, "--kernel", "relu", "--out", str(out)]) == 0
    assert kernels and set(kernels) == {"relu"}
    assert assert_written_by_the_results_writer(out)["settings"]["kernel"] == "relu"
    assert "kernel relu" in (tmp_path / "relu.md").read_text()
