"""Zero-shot GB1: model scores, the BLOSUM62 baseline and random scores against fitness."""

import torch

from performers import FavorConfig
from performers.bench.gb1_zero_shot import blosum62_scores, gb1_zero_shot, write_report
from performers.jobs import protein_model_config
from performers.models import build_model
from performers.proteins import ProteinTokenizer
from performers.proteins.substitution import blosum62
from tests.helpers.results import assert_written_by_the_results_writer


def test_blosum62_is_the_symmetric_standard_matrix_and_scores_substitutions():
    matrix = blosum62()
    letters = "ARNDCQEGHILKMFPSTWYV"
    assert len(matrix) == 400 and all(matrix[a, b] == matrix[b, a] for a in letters for b in letters)
    assert (matrix["W", "W"], matrix["A", "A"], matrix["V", "A"], matrix["D", "G"]) == (11, 4, 0, -1)
    assert blosum62_scores("MVDG", ["MVDG", "MADG", "MAGG"]) == [0.0, 0.0, -1.0]


def test_gb1_zero_shot_reports_the_model_and_both_baselines(tmp_path):
    torch.manual_seed(0)
    config = protein_model_config(
        d_model=16, num_layers=1, num_heads=2, d_ff=32, position="rotary", favor=FavorConfig(8)
    )
    model = build_model(config, "mlm").eval()
    result = gb1_zero_shot(model, ProteinTokenizer(), draws=5, progress=False)
    assert result["variants"] == 8733 and result["test_variants"] == 1745
    assert [r["method"].split()[0] for r in result["rows"]] == ["model", "BLOSUM62", "random"]
    assert result["scores"]["Sequence0"] == 0.0  # the wild type
    assert all(-1 <= r["spearman_all"] <= 1 and -1 <= r["spearman_test"] <= 1 for r in result["rows"])
    assert result["rows"][2]["spearman_sd"] > 0
    written = write_report(result, tmp_path, "performers bench gb1-zero-shot m", "m")
    assert written == tmp_path / "gb1_zero_shot.json"
    assert assert_written_by_the_results_writer(written)["rows"] == result["rows"]
    text = (tmp_path / "gb1_zero_shot.md").read_text()
    assert "BLOSUM62 sum" in text and "| Spearman, all variants |" in text
