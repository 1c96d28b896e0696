"""``performers bench esm-fidelity``: a tiny ESM teacher trained, converted and distilled, every row
measured the same way and written through the results writer."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from performers.bench.esm_teacher import ESM_VOCAB, esm_tokenizer, mask_for_mlm
from performers.cli import main
from performers.integrations.transformers import is_performerized, performerize
from performers.jobs.hf_protein_lm import evaluate_protein_lm, protein_lm_from_directory
from performers.jobs.protein_evaluation import corpus_split
from performers.layers import FavorConfig
from tests.helpers.results import assert_written_by_the_results_writer

TINY = ["--layers", "1", "--width", "16", "--heads", "2", "--steps", "5", "--lr", "1e-2", "--warmup", "0"]
TINY += ["--batch-size", "4"]
TINY += [
    "--max-length",
    "32",
    "--eval-proteins",
    "6",
    "--gb1-limit",
    "30",
    "--distill-steps",
    "1",
    "--threads",
    "1",
]


def test_tiny_run_measures_exact_converted_and_distilled_through_the_writer(tmp_path, capsys):
    out, run_dir = tmp_path / "esm_fidelity.json", tmp_path / "runs"
    args = ["bench", "esm-fidelity", *TINY, "--num-features-sweep", "8", "--dtype", "float64"]
    assert main([*args, "--run-dir", str(run_dir), "--out", str(out)]) == 0
    record = assert_written_by_the_results_writer(out)
    rows = record["rows"]
    assert [(r["stage"], r["num_features"]) for r in rows] == [
        ("exact", None),
        ("converted", 8),
        ("distilled", 8),
    ]
    # The exact row is the saved teacher evaluated on the test split as `evaluate` does it.
    teacher = protein_lm_from_directory(run_dir / "teacher", dtype=torch.float64)
    assert not is_performerized(teacher.model)
    test = corpus_split(None, "test", 6)
    expected, _ = evaluate_protein_lm(teacher, test, max_length=32, batch_size=4, seed=0)
    assert rows[0]["accuracy"] == expected["accuracy"] > 0  # 5 steps learn the frequent residues
    assert rows[0]["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-12)
    assert rows[0]["masked_residues"] == expected["tokens"] and rows[0]["gb1_variants"] == 30
    # The converted row is the teacher under FAVOR+ at M=8 with the run's projections (seed 0):
    # evaluated here the same way it is the same number, and not the exact model's.
    converted = protein_lm_from_directory(run_dir / "teacher", dtype=torch.float64)
    performerize(converted.model, FavorConfig(num_features=8, seed=0))
    again, _ = evaluate_protein_lm(converted, test, max_length=32, batch_size=4, seed=0)
    assert rows[1]["loss"] == pytest.approx(again["loss"], rel=1e-12) and rows[1]["loss"] != rows[0]["loss"]
    # The distilled rows are the students saved by the distillation, FAVOR+ at their M.
    for row in rows[2:]:
        student = json.loads(
            (run_dir / "distilled" / f"M{row['num_features']}" / "final" / "config.json").read_text()
        )
        assert student["favor_config"]["num_features"] == row["num_features"]
        assert row["student"].endswith("final") and row["distill_seconds"] > 0
    assert [t["num_features"] for t in record["targets"]] == [8]
    report = out.with_suffix(".md").read_text()
    assert report.startswith("# Fidelity") and "--num-features-sweep 8" in report
    assert (
        "| FAVOR+ M=8 | distilled |" in report and report.count("**met**") + report.count("**missed**") == 1
    )
    assert json.loads((run_dir / "teacher" / "training.json").read_text())["config"]["width"] == 16
    # A second run does not train over the first teacher; --teacher measures it again, the same.
    assert main([*args, "--run-dir", str(run_dir), "--out", str(out)]) == 2
    again_out = tmp_path / "again.json"
    teacher_args = ["--teacher", str(run_dir / "teacher"), "--run-dir", str(tmp_path / "again")]
    assert main([*args, *teacher_args, "--out", str(again_out)]) == 0
    again_rows = json.loads(again_out.read_text())["rows"]
    assert [r["loss"] for r in again_rows[:2]] == [r["loss"] for r in rows[:2]]
    # A FAVOR+ model is not a teacher: it is what is measured against one.
    student_args = [
        "--teacher",
        str(run_dir / "distilled" / "M8" / "final"),
        "--run-dir",
        str(tmp_path / "x"),
    ]
    capsys.readouterr()
    assert main([*args, *student_args, "--out", str(tmp_path / "x.json")]) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after transformers' loading progress bar
    assert last.startswith("performers bench esm-fidelity: error: --teacher ") and last.endswith(
        "a FAVOR+ model already; give the original softmax model"
    ), last
    assert not (tmp_path / "x.json").exists()
    _assert_conversion_converges_to_the_teacher(run_dir / "teacher", test)


def _assert_conversion_converges_to_the_teacher(teacher_dir, proteins):
    """What the converted rows measure approaches the exact model as M grows: the mean logit
    error falls ~1/sqrt(M), 22x from M=8 to 4096 (a factor 4 leaves room for the features'
    randomness), in float64 so rounding plays no part."""
    exact = protein_lm_from_directory(teacher_dir, dtype=torch.float64)
    ids = torch.tensor([exact.tokenizer.encode(p[:30]) for p in proteins if len(p) >= 30])
    mask = torch.ones_like(ids)
    reference = exact.logits(ids, mask)
    error = {}
    for m in (8, 4096):
        performerize(exact.model, FavorConfig(num_features=m, seed=0))
        error[m] = (exact.logits(ids, mask) - reference).abs().mean().item()
    assert 0 < error[4096] < error[8] / 4, error


def test_mlm_masking_selects_residues_only_and_splits_80_10_10(tmp_path):
    tokenizer = esm_tokenizer(tmp_path)
    proteins = ["MKTAYIAKQRQISFVKSHFSRQ" * 20] * 100
    batch = tokenizer(proteins, return_tensors="pt")
    ids = batch["input_ids"]
    out = mask_for_mlm(dict(batch), tokenizer, 0.15, torch.Generator().manual_seed(0))
    selected = out["labels"] != -100
    assert not selected[:, 0].any() and not selected[:, -1].any()  # <cls>, <eos>
    assert torch.equal(out["labels"][selected], ids[selected])
    assert torch.equal(out["input_ids"][~selected], ids[~selected])
    share = selected.float().mean().item()
    # ~6,600 selected: the shares' standard errors are below 0.005; 4 of them are allowed.
    n = selected.sum().item()
    masked = (out["input_ids"][selected] == ESM_VOCAB.index("<mask>")).float().mean().item()
    kept = (out["input_ids"][selected] == ids[selected]).float().mean().item()
    assert abs(share - 0.15) < 0.01 and n > 5000
    # A random residue equals the original 1 time in 20, so "kept" is 0.1 + 0.1/20.
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.105) < 0.015
    assert set(out["input_ids"][selected].tolist()) <= set(range(4, 24)) | {ESM_VOCAB.index("<mask>")}


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--width", "15"], "--width: width 15 must be a multiple of heads 2"),
        (["--num-features-sweep", "0"], "--num-features-sweep: num_features must be one or more counts >= 1"),
        (["--gb1-limit", "2"], "--gb1-limit: gb1_limit must be >= 3"),
        (["--eval-proteins", "0"], "--eval-proteins: eval_proteins must be >= 1, got 0"),
        (["--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    ],
)
def test_a_bad_option_is_one_error_line(option, message, tmp_path, capsys):
    out = tmp_path / "r.json"
    args = ["bench", "esm-fidelity", "--heads", "2", *option, "--run-dir", str(tmp_path / "runs")]
    try:
        status = main([*args, "--out", str(out)])
    except SystemExit as exit:  # argparse's own checks (a choice) exit from the parser
        status = exit.code
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith(f"performers bench esm-fidelity: error: {message}") and err.count("\n") == 1, err
    assert not out.exists() and not (tmp_path / "runs").exists()
