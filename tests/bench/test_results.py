"""Every ``performers bench`` subcommand writes its results through one writer
(:func:`performers.bench.results.write_results`): JSON with the environment, markdown beside it,
both atomic. :func:`assert_written_by_the_results_writer` checks a bench's output; the tests of
each bench (named in :data:`CHECKED_IN`) call it on what the bench wrote at tiny sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from performers.bench.environment import environment
from performers.bench.results import write_markdown, write_results
from performers.cli import build_parser, main
from tests.helpers.results import assert_written_by_the_results_writer

# Where each subcommand's output is checked with assert_written_by_the_results_writer.
CHECKED_IN = {
    "approximation": ("bench/test_approximation.py", "test_protein_capture_and_sections_output"),
    "generate": ("models/test_generation.py", "test_bench_generate_smoke"),
    "speed": ("bench/test_speed.py", "test_main_writes_json_markdown"),
    "compile": ("bench/test_compile_speed.py", "test_bench_compile_writes_its_results_through_the_writer"),
    "compat": ("bench/test_compat.py", "test_write_markdown"),
    "embed-score": ("bench/test_results.py", "test_embed_score_loader_and_prepare_write_through_the_writer"),
    "esm-long": (
        "bench/test_esm_long.py",
        "test_cli_measures_every_length_and_attention_and_writes_through_the_writer",
    ),
    "esm-fidelity": (
        "bench/test_esm_fidelity.py",
        "test_tiny_run_measures_exact_converted_and_distilled_through_the_writer",
    ),
    "prepare": ("bench/test_results.py", "test_embed_score_loader_and_prepare_write_through_the_writer"),
    "loader": ("bench/test_results.py", "test_embed_score_loader_and_prepare_write_through_the_writer"),
    "gb1-zero-shot": (
        "bench/test_gb1_zero_shot.py",
        "test_gb1_zero_shot_reports_the_model_and_both_baselines",
    ),
    "context-parallel": (
        "bench/test_context_parallel.py",
        "test_tiny_context_parallel_benchmark_writes_its_report",
    ),
    "gpu": ("bench/test_gpu.py", "test_gpu_suite_runs_on_cpu_and_writes_reports"),
    "proteins-table": (
        "bench/test_proteins.py",
        "test_table2_trains_every_variant_with_the_same_steps_and_reports_them",
    ),
    "proteins-long": (
        "bench/test_proteins.py",
        "test_long_context_budgets_steps_from_each_models_probed_step_time",
    ),
    "proteins-precision": (
        "bench/test_proteins.py",
        "test_precision_trains_float32_and_bf16_per_seed_interleaved_and_reports_them",
    ),
    "pll": ("bench/test_pll.py", "test_pll_bench_measures_both_schedules_and_writes_through_the_writer"),
    "packing": (
        "bench/test_packing.py",
        "test_tiny_packing_bench_trains_every_pair_fairly_through_the_writer",
    ),
    "packed-jobs": (
        "bench/test_packed_jobs.py",
        "test_tiny_packed_jobs_bench_times_packed_and_padded_through_the_writer",
    ),
    "packed-ops": (
        "bench/test_packed_ops.py",
        "test_tiny_packed_ops_bench_times_every_call_through_the_writer",
    ),
    "proteins-backcompat": (
        "bench/test_compat.py",
        "test_backcompat_starts_from_the_exact_weights_and_records_the_recovery_curve",
    ),
    "kernel-sweep": ("bench/test_paper.py", "test_kernel_sweep_end_to_end"),
    "baselines": (
        "bench/test_paper.py",
        "test_baselines_end_to_end_with_equal_steps_and_equal_wall_clock",
    ),
    "pixels": ("bench/test_paper.py", "test_pixels_end_to_end_reports_bits_per_dim_and_samples_images"),
    "text": ("bench/test_paper.py", "test_text_end_to_end_at_two_contexts_with_samples"),
}


def test_every_bench_subcommand_is_checked_somewhere():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    bench = commands["bench"]._subparsers._group_actions[0].choices
    assert set(bench) == set(CHECKED_IN)
    here = Path(__file__).parents[1]
    for file, test in CHECKED_IN.values():
        text = (here / file).read_text()
        start = text.index(f"def {test}(")
        end = text.find("\ndef ", start + 1)
        assert "assert_written_by_the_results_writer" in text[start : None if end < 0 else end], test


def test_write_results_adds_the_environment_and_writes_atomically(tmp_path):
    path = write_results(tmp_path / "a" / "r.json", {"rows": [1, 2], "path": tmp_path}, "# r\n")
    assert path == tmp_path / "a" / "r.json"
    record = assert_written_by_the_results_writer(path)
    assert record["rows"] == [1, 2] and record["path"] == str(tmp_path)  # str() of what JSON lacks
    assert record["environment"] == environment()
    own = {"torch": "recorded before measuring"}
    write_results(tmp_path / "b.json", {"environment": own}, "x", markdown_path=tmp_path / "b" / "t.md")
    assert json.loads((tmp_path / "b.json").read_text())["environment"] == own
    assert (tmp_path / "b" / "t.md").read_text() == "x"
    write_results(tmp_path / "c.json", {})  # JSON only
    assert not (tmp_path / "c.md").exists()
    assert write_markdown(tmp_path / "c.md", "y").read_text() == "y"


def test_a_failing_write_leaves_the_previous_results(tmp_path):
    path = write_results(tmp_path / "r.json", {"n": 1}, "one")
    with pytest.raises(TypeError):
        write_results(path, {"n": object.__new__(type("X", (), {"__str__": None}))}, "two")
    assert json.loads(path.read_text())["n"] == 1 and path.with_suffix(".md").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.md"]


@pytest.mark.slow
def test_embed_score_loader_and_prepare_write_through_the_writer(tmp_path, monkeypatch):
    out = tmp_path / "embed_score.json"
    args = ["bench", "embed-score", "--tasks", "embed", "--backends", "favor", "--lengths", "96"]
    args += ["--residues-per-point", "96", "--d-model", "16", "--layers", "1", "--heads", "2"]
    args += ["--d-ff", "32", "--num-features", "8", "--timeout", "120", "--out", str(out)]
    assert main(args) == 0
    record = assert_written_by_the_results_writer(out)
    assert record["settings"]["num_features"] == 8 and record["points"][0]["error"] is None

    out = tmp_path / "prepare"
    assert main(["bench", "prepare", "--sizes", "--workdir", str(tmp_path / "work"), "--out", str(out)]) == 0
    assert_written_by_the_results_writer(out / "prepare.json")

    from performers.bench import loader

    monkeypatch.setattr(loader, "SETTINGS", loader.SETTINGS[:1])  # the demo setting only
    out = tmp_path / "loader.json"
    args = ["bench", "loader", "--loader-batches", "2", "--model-steps", "2", "--threads", "1"]
    assert main([*args, "--out", str(out)]) == 0
    assert assert_written_by_the_results_writer(out)["rows"][0]["ratio"] > 0
