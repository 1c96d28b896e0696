"""The protein experiments behind docs/results/proteins.md, on tiny budgets."""

import json
import math

from performers.cli import build_parser, main, with_config_file
from performers.experiments import evaluate_model
from performers.models import from_pretrained
from performers.proteins import ProteinTokenizer, default_corpus, read_split
from test_cli_proteins import TINY


def test_table2_trains_every_variant_with_the_same_steps_and_reports_them(tmp_path, capsys):
    assert main(["bench", "proteins-table", *TINY, "--tasks", "mlm", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "table2.md").read_text()
    for name in ("empirical baseline", "Transformer (exact)", "Performer-softmax", "Performer-ReLU"):
        assert f"| BID (masked) | {name}" in table
    record = json.loads((tmp_path / "table2.json").read_text())
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


def test_long_context_budgets_steps_from_each_models_probed_step_time(tmp_path):
    args = [*TINY, "--max-length", "64", "--minutes", "0.002", "--probe-steps", "3", "--concatenate"]
    assert main(["bench", "proteins-long", *args, "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "long.json").read_text())
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


def test_backcompat_starts_from_the_exact_weights_and_records_the_recovery_curve(tmp_path):
    assert main(["train", *TINY, "--attention", "exact", "--out", str(tmp_path / "exact")]) == 0
    out = tmp_path / "bc"
    # The model comes from --exact: the size and FAVOR options are not options of this command.
    model_options = {"--d-model", "--layers", "--heads", "--d-ff", "--num-features"}
    run = [a for i, a in enumerate(TINY) if a not in model_options and TINY[i - 1] not in model_options]
    args = ["bench", "proteins-backcompat", *run, "--exact", str(tmp_path / "exact"), "--out", str(out)]
    assert main(args) == 0
    record = json.loads((out / "backcompat.json").read_text())
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


def test_a_config_file_sets_options_of_a_nested_bench_command(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"d_model": 48, "minutes": 2.5}))
    argv = ["bench", "proteins-long", "--config", str(path), "--layers", "3"]
    parser = build_parser()
    args = with_config_file(parser, argv, parser.parse_args(argv))
    assert (args.d_model, args.minutes, args.layers) == (48, 2.5, 3)


def test_precision_trains_float32_and_bf16_per_seed_interleaved_and_reports_them(tmp_path):
    args = [*TINY, "--seeds", "0", "1", "--tail", "2", "--out", str(tmp_path)]
    assert main(["bench", "proteins-precision", *args]) == 0
    record = json.loads((tmp_path / "precision.json").read_text())
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
    from performers.experiments.precision import PrecisionRun, summarize_precision

    runs = [PrecisionRun("float32", s, 1.0, 100.0, loss, 10) for s, loss in enumerate((2.0, 2.2, 2.4))]
    runs += [PrecisionRun("bfloat16", s, 0.5, 200.0, loss, 10) for s, loss in enumerate((2.25, 2.3, 2.35))]
    summary = summarize_precision(runs)
    assert math.isclose(summary["speedup"], 2.0) and summary["within_spread"]  # |0.1| <= sd 0.2
    runs[3:] = [PrecisionRun("bfloat16", s, 0.5, 200.0, loss, 10) for s, loss in enumerate((2.6, 2.7, 2.8))]
    assert not summarize_precision(runs)["within_spread"]
