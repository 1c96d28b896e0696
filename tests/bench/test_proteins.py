"""The protein experiments behind docs/results/proteins.md, on tiny budgets."""

import json
import math

import pytest

from performers.cli import build_parser, main, with_config_file
from performers.models import from_pretrained
from tests.cli.test_proteins import TINY
from tests.helpers.results import assert_written_by_the_results_writer


@pytest.mark.slow
def test_table2_trains_every_variant_with_the_same_steps_and_reports_them(tmp_path, capsys):
    assert main(["bench", "proteins-table", *TINY, "--tasks", "mlm", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "table2.md").read_text()
    for name in ("empirical baseline", "Transformer (exact)", "Performer-softmax", "Performer-ReLU"):
        assert f"| BID (masked) | {name}" in table
    record = assert_written_by_the_results_writer(tmp_path / "table2.json")
    runs = record["tasks"]["mlm"]["runs"]
    assert [r["name"] for r in runs] == [
        "Transformer (exact)",
        "Performer-softmax (FAVOR+)",
        "Performer-ReLU (generalized)",
    ]
    for directory in ("exact", "favor-softmax", "favor-relu"):
        steps = (tmp_path / "mlm" / directory / "metrics.jsonl").read_text().splitlines()
        assert len(steps) == 4
    assert from_pretrained(tmp_path / "mlm" / "favor-relu" / "final").config.favor.kernel == "relu"
    assert (tmp_path / "curves_mlm.png").exists()


@pytest.mark.slow
def test_long_context_budgets_steps_from_each_models_probed_step_time(tmp_path):
    args = [*TINY, "--max-length", "64", "--minutes", "0.002", "--probe-steps", "3", "--concatenate"]
    assert main(["bench", "proteins-long", *args, "--out", str(tmp_path)]) == 0
    record = assert_written_by_the_results_writer(tmp_path / "long.json")
    assert record["training"]["concatenate"] and record["training"]["max_length"] == 64
    for run, directory in zip(record["runs"], ("exact", "favor"), strict=True):
        lines = (tmp_path / "probe" / directory / "metrics.jsonl").read_text().splitlines()
        probe = [json.loads(line) for line in lines]
        assert len(probe) == 3
        median = sorted(r["step_seconds"] for r in probe[1:])
        step_time = (median[0] + median[1]) / 2
        assert math.isclose(record["step_seconds"][run["name"]], step_time)
        assert run["steps"] == max(1, math.floor(0.002 * 60 / step_time))
        trained = (tmp_path / directory / "metrics.jsonl").read_text().splitlines()
        assert len(trained) == run["steps"]
    report = (tmp_path / "long.md").read_text()
    assert "Speed-up of Performer (FAVOR+) over Transformer (exact, SDPA)" in report


def test_a_config_file_sets_options_of_a_nested_bench_command(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"d_model": 48, "minutes": 2.5}))
    argv = ["bench", "proteins-long", "--config", str(path), "--layers", "3"]
    parser = build_parser()
    args = with_config_file(parser, argv, parser.parse_args(argv))
    assert (args.d_model, args.minutes, args.layers) == (48, 2.5, 3)


@pytest.mark.slow
def test_precision_trains_float32_and_bf16_per_seed_interleaved_and_reports_them(tmp_path):
    args = [*TINY, "--seeds", "0", "1", "--tail", "2", "--out", str(tmp_path)]
    assert main(["bench", "proteins-precision", *args]) == 0
    record = assert_written_by_the_results_writer(tmp_path / "precision.json")
    order = [(r["precision"], r["seed"]) for r in record["runs"]]
    assert order == [("float32", 0), ("bfloat16", 0), ("float32", 1), ("bfloat16", 1)]
    for run in record["runs"]:
        lines = (
            (tmp_path / f"{run['precision']}-seed{run['seed']}" / "metrics.jsonl").read_text().splitlines()
        )
        losses = [json.loads(line)["loss"] for line in lines]
        assert run["steps"] == len(losses) and math.isclose(run["final_loss"], sum(losses[-2:]) / 2)
    # Same seed, different precision: the same data and initial weights, nearly the same loss.
    first = {(r["precision"], r["seed"]): r["final_loss"] for r in record["runs"]}
    assert abs(first["float32", 0] - first["bfloat16", 0]) < 0.05 * first["float32", 0]
    summary = record["summary"]
    assert math.isclose(
        summary["speedup"], summary["bfloat16"]["tokens_per_second"] / summary["float32"]["tokens_per_second"]
    )
    assert "float32's seed-to-seed spread" in (tmp_path / "precision.md").read_text()


def test_precision_summary_judges_the_spread():
    from performers.bench.proteins_precision import PrecisionRun, summarize_precision

    runs = [PrecisionRun("float32", s, 1.0, 100.0, loss, 10) for s, loss in enumerate((2.0, 2.2, 2.4))]
    runs += [PrecisionRun("bfloat16", s, 0.5, 200.0, loss, 10) for s, loss in enumerate((2.25, 2.3, 2.35))]
    summary = summarize_precision(runs)
    assert math.isclose(summary["speedup"], 2.0) and summary["within_spread"]  # |0.1| <= sd 0.2
    runs[3:] = [PrecisionRun("bfloat16", s, 0.5, 200.0, loss, 10) for s, loss in enumerate((2.6, 2.7, 2.8))]
    assert not summarize_precision(runs)["within_spread"]
