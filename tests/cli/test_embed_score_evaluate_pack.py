"""``--pack/--no-pack`` of ``performers embed``, ``score`` and ``evaluate``: the packed default
writes what ``--no-pack`` writes (up to float rounding), ``--no-pack`` never reaches the packed
pass, and ``--pack`` is refused where nothing packs (variant scores) or the model cannot (a
Hugging Face model)."""

import csv

import numpy as np
import pytest
import torch

from performers.cli import main
from performers.jobs import embedding, protein_evaluation, scoring
from tests.jobs.test_embedding import save_model, tiny_model, write_fasta

PROTEINS = [("A", "MKVLAAGIVGLLLA"), ("B", "M"), ("C", "ACDEFGHIKLMNPQRSTVWY"), ("D", "WWYQKT")]
# float64 models: packed and padded differ in summation order only.
TOLERANCE = 256 * torch.finfo(torch.float64).eps


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pack")
    return {
        "mlm": save_model(tiny_model("mlm"), root / "mlm"),
        "clm": save_model(tiny_model("clm"), root / "clm"),
        "fasta": write_fasta(root / "proteins.fasta", PROTEINS),
    }


def _refuse_packed(monkeypatch):
    """Make every packed pass fail: a run that succeeds took the padded path."""

    def refuse(*args, **kwargs):
        raise AssertionError("the packed path was taken")

    for module, name in (
        (embedding, "packed_hidden_states"),
        (scoring, "packed_logits"),
        (protein_evaluation, "pack_rows"),
    ):
        monkeypatch.setattr(module, name, refuse)


def _rows(path):
    return list(csv.DictReader(open(path)))


def test_embed_packed_by_default_equals_no_pack(setup, tmp_path, monkeypatch):
    argv = ["embed", str(setup["mlm"]), str(setup["fasta"]), "--include", "mean", "per_tok", "bos"]
    argv += ["--repr-layers", "0", "-1", "--max-tokens", "20", "--dtype", "float64"]
    assert main([*argv, "--out", str(tmp_path / "packed.npz")]) == 0
    _refuse_packed(monkeypatch)
    assert main([*argv, "--out", str(tmp_path / "padded.npz"), "--no-pack"]) == 0
    packed, padded = np.load(tmp_path / "packed.npz"), np.load(tmp_path / "padded.npz")
    assert sorted(packed.files) == sorted(padded.files) and len(packed.files) == 4 * 3 * 2
    for key in packed.files:
        assert packed[key].shape == padded[key].shape
        assert np.abs(packed[key] - padded[key]).max() <= TOLERANCE * max(1.0, np.abs(padded[key]).max())
    with pytest.raises(AssertionError, match="packed path"):  # the default does pack
        main([*argv, "--out", str(tmp_path / "again.npz")])


def test_score_causal_packed_by_default_equals_no_pack(setup, tmp_path, monkeypatch, cli_error):
    argv = ["score", str(setup["clm"]), str(setup["fasta"]), "--max-tokens", "20", "--dtype", "float64"]
    assert main([*argv, "--out", str(tmp_path / "packed.csv"), "--pack"]) == 0
    _refuse_packed(monkeypatch)
    assert main([*argv, "--out", str(tmp_path / "padded.csv"), "--no-pack"]) == 0
    packed, padded = _rows(tmp_path / "packed.csv"), _rows(tmp_path / "padded.csv")
    assert [r["id"] for r in packed] == [r["id"] for r in padded] == [name for name, _ in PROTEINS]
    for got, expected in zip(packed, padded, strict=True):
        expected_ll = float(expected["log_likelihood"])
        assert abs(float(got["log_likelihood"]) - expected_ll) <= TOLERANCE * max(1.0, abs(expected_ll))
    wildtype = write_fasta(tmp_path / "wt.fasta", [("WT", "MKVLAAG")])
    variants = ["score", str(setup["clm"]), "--wildtype", str(wildtype), "--mutations", "K2A"]
    cli_error([*variants, "--out", str(tmp_path / "v.csv"), "--pack"], match="variant scores never pack")
    assert main([*variants, "--out", str(tmp_path / "v.csv")]) == 0  # unset: fine, padded


@pytest.mark.parametrize("task", ["mlm", "clm"])
def test_evaluate_packed_by_default_equals_no_pack(task, setup, tmp_path, monkeypatch, capsys):
    argv = ["evaluate", str(setup[task]), "--data", str(setup["fasta"]), "--batch-size", "3"]
    assert main([*argv, "--per-sequence", str(tmp_path / "packed.csv")]) == 0
    packed_line = capsys.readouterr().out.splitlines()[0]
    _refuse_packed(monkeypatch)
    assert main([*argv, "--per-sequence", str(tmp_path / "padded.csv"), "--no-pack"]) == 0
    padded_line = capsys.readouterr().out.splitlines()[0]
    packed, padded = _rows(tmp_path / "packed.csv"), _rows(tmp_path / "padded.csv")
    assert len(packed) >= 2 and [r["id"] for r in packed] == [r["id"] for r in padded]
    for got, expected in zip(packed, padded, strict=True):
        assert got["tokens"] == expected["tokens"] and got["accuracy"] == expected["accuracy"]
        loss = float(expected["loss"])
        assert abs(float(got["loss"]) - loss) <= TOLERANCE * max(1.0, loss)
    # The summary line prints rounded numbers: the same digits (all but its timing).
    assert packed_line.rsplit(" in ", 1)[0] == padded_line.rsplit(" in ", 1)[0]
    assert " proteins in " in packed_line and packed_line.endswith(" proteins/s)")


def test_a_hugging_face_model_runs_padded_and_refuses_pack(tmp_path, cli_error, monkeypatch):
    pytest.importorskip("transformers", reason="needs the [hf] extra (Hugging Face transformers)")
    from tests.jobs.test_protein_models import _esm

    esm = str(_esm(tmp_path / "esm"))
    fasta = str(write_fasta(tmp_path / "p.fasta", PROTEINS[:2]))
    out = str(tmp_path / "e.npz")
    cli_error(["embed", esm, fasta, "--out", out, "--pack"], match=r"--pack.*does not take packed input")
    cli_error(["score", esm, fasta, "--out", str(tmp_path / "s.csv"), "--pack"], match="does not take packed")
    cli_error(["evaluate", esm, "--data", fasta, "--pack"], match="Hugging Face model is evaluated on padded")
    _refuse_packed(monkeypatch)
    assert main(["embed", esm, fasta, "--out", out]) == 0  # unset: padded
