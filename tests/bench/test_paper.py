"""The paper-evidence benchmarks: attention variants by name, the stability record of a run, and
every command (kernel-sweep, baselines, pixels, text) end to end at a tiny size — same initial
weights across variants, reports, JSON and plots written, budgets honoured."""

import json
import math
import statistics

import pytest
import torch

from performers.bench.attention_sweep import stability
from performers.bench.paper_tasks import (
    ModelSize,
    TaskSpec,
    task_model_config,
    variant_config,
    variant_names,
)
from performers.cli import main
from performers.models import PerformerConfig, build_model
from tests.helpers.results import assert_written_by_the_results_writer

TINY_MODEL = ["--d-model", "16", "--layers", "1", "--heads", "2", "--d-ff", "32", "--num-features", "8"]
TINY = [
    *TINY_MODEL,
    "--window",
    "8",
    "--steps",
    "3",
    "--batch-size",
    "2",
    "--warmup",
    "1",
    "--eval-every",
    "2",
]


def test_variant_names_select_the_attention_and_kernel():
    base = PerformerConfig(vocab_size=8, d_model=16, num_heads=2, num_layers=1, d_ff=16)
    assert variant_config("exact", base).attention == "exact"
    assert variant_config("local", base).attention == "local"
    linear = variant_config("linear", base)
    assert (linear.attention, linear.favor.kernel, linear.favor.num_features) == ("favor", "elu", None)
    assert variant_config("favor-softmax", base).favor.kernel == "softmax"
    assert variant_config("favor++", base).favor.kernel == "favor++"
    assert variant_config("favor-sigmoid", base).favor.num_features == base.favor.num_features
    for name in ("favor-gelu", "favor-tanh", "favor-cos", "favor-identity", "favor-relu", "favor-abs"):
        assert name in variant_names()
    with pytest.raises(ValueError, match="unknown attention variant 'favor-nope'"):
        variant_config("favor-nope", base)


def test_every_variant_of_a_task_starts_from_the_same_weights():
    size = ModelSize(d_model=16, num_layers=1, num_heads=2, d_ff=32, num_features=8)
    states = []
    for name in ("exact", "local", "linear", "favor-softmax", "favor++", "favor-relu"):
        torch.manual_seed(0)
        model = build_model(task_model_config("text", size, name, max_length=32), "clm")
        states.append({k: v for k, v in model.state_dict().items() if "projection" not in k})
    for other in states[1:]:
        assert other.keys() == states[0].keys()
        assert all(torch.equal(other[k], states[0][k]) for k in other)


def test_stability_counts_nonfinite_steps_spikes_and_divergence():
    calm = [{"loss": 3.0 - 0.01 * i, "grad_norm": 1.0} for i in range(40)]
    assert stability(calm) == {
        "nonfinite_steps": 0,
        "grad_norm_spikes": 0,
        "max_grad_norm": 1.0,
        "diverged": False,
    }
    spiky = [dict(r) for r in calm]
    spiky[30]["grad_norm"] = 50.0
    assert stability(spiky)["grad_norm_spikes"] == 1 and stability(spiky)["max_grad_norm"] == 50.0
    broken = [dict(r) for r in calm]
    broken[35]["loss"] = math.nan
    assert stability(broken)["nonfinite_steps"] == 1 and stability(broken)["diverged"]
    rising = [{"loss": 1.0 + 0.1 * i, "grad_norm": 1.0} for i in range(40)]
    assert stability(rising)["diverged"]


def test_kernel_sweep_end_to_end(tmp_path):
    out = tmp_path / "sweep"
    args = ["bench", "kernel-sweep", *TINY, "--max-length", "32", "--eval-limit", "1", "--final-limit", "4"]
    args += ["--train-limit", "20", "--seeds", "0", "1", "--out", str(out)]
    args += ["--variants", "exact", "favor-softmax", "favor-sigmoid", "favor-identity"]
    assert main(args) == 0
    report = (out / "kernel_sweep.md").read_text()
    data = assert_written_by_the_results_writer(out / "kernel_sweep.json")
    for task, metric in (("proteins", "accuracy"), ("text", "bits_per_character")):
        rows = data["tasks"][task]["rows"]
        assert [r["variant"] for r in rows] == ["exact", "favor-softmax", "favor-sigmoid", "favor-identity"]
        assert all(r["seeds"] == 2 and r["steps"] == 3 and r["metric"] == metric for r in rows)
        runs = data["tasks"][task]["runs"]
        assert len(runs) == 8 and all(r["error"] is None for r in runs)
        assert all(math.isfinite(r["final"][metric]) for r in runs)
        assert (out / f"kernel_sweep_{task}_steps.png").stat().st_size > 0
    assert "| favor-sigmoid | steps |" in report and "grad-norm spikes" in report


@pytest.mark.slow
def test_baselines_end_to_end_with_equal_steps_and_equal_wall_clock(tmp_path):
    out = tmp_path / "baselines"
    args = ["bench", "baselines", *TINY, "--tasks", "text", "--max-length", "32", "--eval-limit", "1"]
    args += ["--final-limit", "2", "--seconds", "0.5", "--probe-steps", "3", "--out", str(out)]
    args += ["--variants", "local", "linear"]
    assert main(args) == 0
    rows = assert_written_by_the_results_writer(out / "baselines.json")["tasks"]["text"]["rows"]
    assert [(r["variant"], r["budget"]) for r in rows] == [
        ("local", "steps"),
        ("linear", "steps"),
        ("local", "wall-clock"),
        ("linear", "wall-clock"),
    ]
    assert all(r["steps"] == 3 for r in rows[:2])
    data = json.loads((out / "baselines.json").read_text())["tasks"]["text"]["runs"]
    for variant in ("local", "linear"):  # steps = budget / the probe's median step time
        probe = [json.loads(line) for line in (out / "text" / "probe" / variant / "metrics.jsonl").open()]
        median = statistics.median(r["step_seconds"] for r in probe[1:])
        run = next(r for r in data if r["variant"] == variant and r["budget"] == "wall-clock")
        assert run["steps"] == max(1, int(0.5 / median))
        assert "final" in run and not (out / "text" / "probe" / variant / "final").exists()
    assert all(r["peak_extra_mib"] > 0 for r in rows)
    curve = data[0]["extra"]["curve"]
    assert all(math.isfinite(point["grad_norm"]) for point in curve) and curve[-1]["step"] == 3
    assert "wall-clock" in (out / "baselines.md").read_text()


@pytest.mark.slow
def test_pixels_end_to_end_reports_bits_per_dim_and_samples_images(tmp_path):
    out = tmp_path / "pixels"
    args = ["bench", "pixels", *TINY, "--samples", "2", "--eval-images", "2", "--test-images", "4"]
    args += ["--train-images", "8", "--variants", "favor-softmax", "local", "--out", str(out)]
    assert main(args) == 0
    data = assert_written_by_the_results_writer(out / "pixels.json")
    for run in data["runs"]:
        assert 0 < run["final"]["bits_per_dimension"] < 12
        assert run["extra"]["sampling"]["seconds"] > 0
    assert (out / "pixels.png").stat().st_size > 0
    report = (out / "pixels.md").read_text()
    assert "sampling 2 images" in report and "bits/dim" in report and "trained on 8 images" in report


@pytest.mark.slow
def test_text_end_to_end_at_two_contexts_with_samples(tmp_path):
    out = tmp_path / "text"
    args = ["bench", "text", *TINY, "--contexts", "32", "64", "--tokens-per-step", "128"]
    args += [
        "--eval-windows",
        "2",
        "--final-windows",
        "3",
        "--sample-length",
        "12",
        "--variants",
        "exact",
        "linear",
    ]
    args += ["--out", str(out)]
    assert main(args) == 0
    data = assert_written_by_the_results_writer(out / "text.json")
    assert set(data["contexts"]) == {"32", "64"}
    for context in data["contexts"].values():
        for run in context["runs"]:
            assert 0 < run["final"]["bits_per_character"] < 10
            assert len(run["extra"]["sample"]["text"]) == 12
    report = (out / "text.md").read_text()
    assert "### context 32 (batch 4)" in report and "### context 64 (batch 2)" in report
    assert "ROMEO:" in report


def test_task_spec_refuses_unknown_tasks_and_empty_limits():
    with pytest.raises(ValueError, match="task must be one of"):
        TaskSpec("audio")
    with pytest.raises(ValueError, match=r"TaskSpec\.final_limit must be an int >= 1"):
        TaskSpec("pixels", final_limit=0)
