"""``performers bench compile`` at a tiny size (the cheap ``eager`` backend: what is checked is
the measurement's plumbing, not inductor's speed)."""

import torch

from performers.cli import main
from tests.helpers.results import assert_written_by_the_results_writer


def test_bench_compile_writes_its_results_through_the_writer(tmp_path, cli_error):
    out = tmp_path / "compile.json"
    args = ["bench", "compile", "--length", "40", "--heads", "2", "--dim", "8", "--num-features", "8"]
    args += ["--repeats", "1", "--extra-lengths", "33", "--backend", "eager", "--out", str(out)]
    args += ["--directions", "bidirectional"]  # (causal calls run eagerly: tests/ops/test_compile.py)
    try:
        assert main(args) == 0
    finally:
        torch._dynamo.reset()
    record = assert_written_by_the_results_writer(out)
    timed = [r for r in record["rows"] if "method" in r]
    assert [r["method"] for r in timed] == ["eager", "compiled", "compiled-generic"]
    assert all(r["forward_ms"] > 0 and r["forward_backward_ms"] > 0 for r in timed)
    # A further length compiles nothing new: the point of compiling with dynamic shapes.
    assert [r["recompiles_over_extra_lengths"] for r in record["rows"] if "method" not in r] == [0]
    text = out.with_suffix(".md").read_text()
    assert "| compiled-generic |" in text and "performers bench compile" in text
    cli_error(["bench", "compile", "--repeats", "0", "--out", str(out)], match="--repeats must be >= 1")
