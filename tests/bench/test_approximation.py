"""`performers bench approximation`: every section runs at toy sizes and reports sane numbers."""

import math

import pytest
import torch

from performers import FavorConfig, PerformerConfig, PerformerForMaskedLM
from performers.bench import approximation, approximation_report
from performers.cli import main
from performers.ops import theory
from tests.helpers.results import assert_written_by_the_results_writer


def test_attention_rows_include_favor_plus_plus_with_its_theory(capsys):
    assert (
        main(["bench", "approximation", "--length", "32", "--dim", "4", "--features", "4", "--repeats", "2"])
        == 0
    )
    table = capsys.readouterr().out
    for kernel in ("| softmax |", "| softmax-hyperbolic |", "| trig |", "| favor++ |"):
        assert kernel in table
    with pytest.raises(ValueError, match="no MSE formula"):
        approximation.measure(length=8, dim=4, feature_counts=(2,), repeats=1, kernels=("relu",))


def test_kernel_sweep_and_variance_reduction():
    rows = approximation.kernel_mse_sweep(
        dim=4, feature_counts=(4,), repeats=50, kernels=("softmax", "favor++")
    )
    assert len(rows) == len(approximation.KERNEL_PAIRS) * 2 * 2
    assert all(r["mse"] >= 0 and r["mse_se"] >= 0 and r["mse_theory_iid"] > 0 for r in rows)
    for r in rows:  # FAVOR++'s closed form never exceeds FAVOR+'s for the same pair
        if r["kernel"] == "favor++":
            x, y = approximation._pair(r["r"], r["cos"], 4)
            assert r["mse_theory_iid"] <= theory.mse_positive(x, y, 4).item()
    reduction = approximation.variance_reduction(dim=64, sum_sq_norms=(1.0, 4.0, 16.0))
    factors = [r["reduction_factor"] for r in reduction]
    assert all(f > 1 for f in factors) and factors == sorted(factors)
    assert reduction[0]["rel_var_favor_plus"] == pytest.approx(math.expm1(1.0))


def test_protein_capture_and_sections_output(tmp_path):
    config = PerformerConfig(
        vocab_size=30, d_model=16, num_layers=2, num_heads=2, d_ff=32, favor=FavorConfig(8)
    )
    PerformerForMaskedLM(config).save_pretrained(tmp_path / "model")
    proteins = [
        "MKTAYIAKQRQISFVKSHFSRQ",
        "MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSF",
        "MSTNPKPQRKTKRNTNRRPQDVKFPGG",
    ]
    layers, mask, info = approximation.capture_protein_qkv(
        tmp_path / "model", num_proteins=3, max_length=40, sequences=proteins
    )
    assert len(layers) == 2 and info["layers"] == 2 and info["proteins"] == 3
    q, k, _ = layers[0]
    assert q.shape[:2] == (3, 2) and q.shape == k.shape and q.dtype == torch.float64
    assert mask.shape == (3, q.shape[2]) and info["tokens"] == int((~mask).sum())

    out = tmp_path / "out"
    args = ["bench", "approximation", "--sections", "attention", "reduction", "--length", "16", "--dim", "4"]
    args += [
        "--num-features-sweep",
        "4",
        "--repeats",
        "2",
        "--kernels",
        "softmax",
        "favor++",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    payload = assert_written_by_the_results_writer(out / "approximation.json", out / "tables.md")
    assert set(payload) == {"settings", "attention", "reduction", "environment"}
    assert payload["settings"]["feature_counts"] == [4]
    assert "FAVOR++ vs FAVOR+" in (out / "tables.md").read_text()

    rows, infos = approximation.protein_attention_errors(
        [tmp_path / "model"],
        feature_counts=(4,),
        repeats=2,
        kernels=("softmax", "favor++"),
        sequences=proteins,
    )
    assert {r["layer"] for r in rows} == {0, 1} and all(math.isfinite(r["attention_rel_error"]) for r in rows)
    payload["proteins"] = {"models": infos, "rows": rows}
    assert "trained protein models" in approximation_report.format_sections(payload, payload["settings"])
    (path,) = [p for p in approximation_report.plot_sections(payload, out) if p.name == "attention_error.png"]
    assert path.stat().st_size > 0
    with pytest.raises(ValueError, match="needs --model"):
        approximation.run_sections(
            ["proteins"], length=8, dim=4, feature_counts=(2,), repeats=1, input_std=0.5, seed=0
        )


def test_sklearn_digits_section_small():
    pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install 'performers[sklearn]')")
    rows, info = approximation.sklearn_digits(n_components=(16,), seeds=1)
    assert {r["method"] for r in rows} >= {"RBFSampler", "Nystroem", "Positive (iid)", "FAVOR++ (orthogonal)"}
    assert all(0 < r["gram_rel_error"] and 0 < r["accuracy"] <= 1 for r in rows)
    assert info["gamma"] > 0 and 0 < info["kernel_svm_accuracy"] <= 1
