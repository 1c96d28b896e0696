"""``performers score`` with mutants of a wild type — ``--mutations``, ``--mutations-file``,
``--saturation`` and its heatmap — and ``--dms`` with a target, whose results.json holds the
Spearman beside its BLOSUM62 baseline; every user error in one line."""

import csv
import json

import pytest
import torch

from performers.cli import main
from performers.jobs import saturation_scan, score_mutation_list
from performers.jobs.variant_scan import blosum62_spearman, parse_mutants
from tests.jobs.test_embedding import TOKENIZER, save_model, tiny_model, write_fasta

WT = "MKVLAAGIVDLLA"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny masked model saved once (float32 on disk, run in float64), and its wild type."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("score")
    model = tiny_model("mlm", position="rotary")
    directory = save_model(model.float(), root / "model")
    wildtype = write_fasta(root / "wt.fasta", [("WT", WT)])
    return model.double(), directory, wildtype


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def base(setup, out):
    _, directory, wildtype = setup
    return ["score", str(directory), "--wildtype", str(wildtype), "--out", str(out), "--dtype", "float64"]


def test_a_mutation_list_and_a_file_of_mutants(setup, tmp_path, capsys):
    model = setup[0]
    out = tmp_path / "mutants.csv"
    assert main([*base(setup, out), "--mutations", "V3A,M1A:V3C,D10G"]) == 0
    assert "wrote 3 mutant scores (masked-marginals) against WT" in capsys.readouterr().out
    rows = read_csv(out)
    assert list(rows[0]) == ["mutant", "position", "wildtype", "mutant_aa", "score"]
    expected = score_mutation_list(model, TOKENIZER, WT, "V3A,M1A:V3C,D10G", progress=False)
    assert [r["mutant"] for r in rows] == ["V3A", "M1A:V3C", "D10G"] and rows[1]["position"] == "1:3"
    assert [float(r["score"]) for r in rows] == pytest.approx([e["score"] for e in expected], rel=1e-9)

    listed = tmp_path / "mutants.txt"
    listed.write_text("V102A\nM100A:V102C,D109G\n")
    out2 = tmp_path / "from_file.csv"
    assert main([*base(setup, out2), "--mutations-file", str(listed), "--offset", "100"]) == 0
    shifted = read_csv(out2)
    assert [r["mutant"] for r in shifted] == ["V102A", "M100A:V102C", "D109G"]
    assert [r["score"] for r in shifted] == [r["score"] for r in rows]


def test_a_saturation_scan_writes_its_csv_and_heatmap(setup, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    model = setup[0]
    out = tmp_path / "scan.csv"
    assert main([*base(setup, out), "--saturation", "--positions", "2-4"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 57 substitutions (saturation scan) (masked-marginals)" in printed
    rows = read_csv(out)
    scan = saturation_scan(model, TOKENIZER, WT, positions="2-4", progress=False)
    assert [r["mutant"] for r in rows] == [r["mutant"] for r in scan.to_rows()]
    assert [float(r["score"]) for r in rows] == pytest.approx([r["score"] for r in scan.to_rows()], rel=1e-9)
    png = tmp_path / "scan.png"  # beside --out by default
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(png) in printed
    custom = tmp_path / "pictures" / "heat.png"
    custom.parent.mkdir()
    assert main([*base(setup, tmp_path / "all.csv"), "--saturation", "--heatmap", str(custom)]) == 0
    assert custom.exists() and len(read_csv(tmp_path / "all.csv")) == 13 * 19


def test_a_dms_target_writes_results_json_with_the_blosum62_baseline(setup, tmp_path, capsys):
    _, directory, wildtype = setup
    assay = tmp_path / "assay.csv"
    assay.write_text("mutant,DMS_score\nV3C,0.5\nM1A:V3C,-1.0\nD10G,2.0\nWT,0.0\nA13W,\nK2R,0.7\n")
    out = tmp_path / "dms" / "scores.csv"
    out.parent.mkdir()
    argv = ["score", str(directory), "--dms", str(assay), "--wildtype", str(wildtype), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    results = json.loads((out.parent / "results.json").read_text())
    metric = results["metrics"]["spearman"]
    spearman = json.loads((out.parent / "scores.spearman.json").read_text())["spearman"]
    baseline, count = blosum62_spearman(parse_mutants("V3C,M1A:V3C,D10G,WT,A13W,K2R", WT),
                                        [0.5, -1.0, 2.0, 0.0, None, 0.7])  # fmt: skip
    assert metric["value"] == spearman and metric["baseline"] == pytest.approx(baseline, rel=1e-12)
    assert metric["count"] == 5 == count and metric["baseline_name"] == "BLOSUM62 sum"
    assert results["command"] == "score" and results["baseline_count"] == 5
    assert f"Spearman {spearman:.4f} between score and DMS_score over 5 rows" in printed
    assert f"BLOSUM62 baseline {baseline:.4f} over 5 rows" in printed and "results.json" in printed


def test_variant_mode_errors_are_one_line(setup, tmp_path, cli_error):
    _, directory, wildtype = setup
    out = str(tmp_path / "e.csv")
    argv = base(setup, out)
    cli_error([*argv, "--mutations", "V3A,K5P"], match=r"--mutations: mutation 'K5P': the wild type has 'A'")
    cli_error([*argv, "--mutations", "V3"], match=r"--mutations: mutation 'V3' is not of the form V39A")
    cli_error([*argv, "--mutations", "V30A"], match=r"'V30A': the wild type has 13 residues")
    cli_error(
        [*argv, "--saturation", "--positions", "10-20"], match=r"--positions: positions '10-20'.*1\.\.13"
    )
    cli_error([*argv, "--saturation", "--positions", "x"], match=r"--positions: .*expected N or N-M")
    cli_error(["score", str(directory), "--saturation", "--out", out], match="--saturation needs --wildtype")
    cli_error(
        [*argv, "--positions", "2-4"], match="--positions belong to a saturation scan: add --saturation"
    )
    cli_error([*argv, "--saturation", "--mutations", "V3A"], match="give one of --mutations")
    fasta = write_fasta(tmp_path / "in.fasta", [("a", WT)])
    with_input = ["score", str(directory), str(fasta), "--wildtype", str(wildtype), "--out", out]
    cli_error([*with_input, "--mutations", "V3A"], match="give no FASTA input or --dms")
    cli_error([*argv, "--mutations-file", str(tmp_path / "none.txt")], match="--mutations-file .*none.txt")
    cli_error(
        [*argv, "--saturation", "--heatmap", str(tmp_path / "no" / "h.png")],
        match="--heatmap .*no such directory",
    )
    cli_error([*argv, "--saturation", "--strategy", "pseudo-ppl"], match="pseudo-ppl")
    assert not (tmp_path / "e.csv").exists()
