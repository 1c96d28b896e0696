"""Mutant lists, saturation scans, their heatmap, apply_mutations and the BLOSUM62 baseline
(performers.jobs.variant_scan, performers.jobs.heatmap): every scan entry against the per-mutant
masked marginal computed on its own, the baseline against a hand computation."""

import math
import struct

import pytest
import torch

from performers.jobs import (
    Mutation,
    MutationError,
    apply_mutations,
    parse_mutations,
    plot_saturation,
    saturation_scan,
    score_mutation_list,
)
from performers.jobs.heatmap import DPI, figure_size
from performers.jobs.scoring import dms_spearman, score_mutants
from performers.jobs.variant_scan import (
    AMINO_ACIDS,
    blosum62_scores,
    blosum62_spearman,
    parse_mutants,
    parse_positions,
    read_mutants_file,
)
from tests.jobs.test_embedding import TOKENIZER, tiny_model

WT = "MKVLAAGIVDLLA"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_apply_mutations_and_its_refusals():
    assert apply_mutations(WT, "V3A:D10G") == "MKALAAGIVGLLA"
    assert apply_mutations(WT, [Mutation(1, "M", "W")]) == "W" + WT[1:]
    assert apply_mutations(WT, "") == WT and apply_mutations(WT, []) == WT
    assert apply_mutations(WT, "V102A", offset=100) == "MKALAAGIVDLLA"  # residue 1 is number 100
    with pytest.raises(MutationError, match=r"mutation 'K3A': the wild type has 'V' at position 3"):
        apply_mutations(WT, "V3A:K3A")
    with pytest.raises(MutationError, match=r"mutation 'V14A': the wild type has 13 residues"):
        apply_mutations(WT, "V14A")
    with pytest.raises(MutationError, match=r"mutation 'V3C': position 3 is mutated twice"):
        apply_mutations(WT, [Mutation(3, "V", "A"), Mutation(3, "V", "C")])
    with pytest.raises(MutationError, match=r"mutation 'A20G': position 20 is outside .* numbered 1\.\.13"):
        apply_mutations(WT, [Mutation(20, "A", "G")])
    with pytest.raises(
        MutationError, match=r"mutation 'K102Q': the wild type has 'V' at position 102, not 'K'"
    ):
        apply_mutations(WT, [Mutation(3, "K", "Q")], offset=100)  # named in the offset numbering
    with pytest.raises(MutationError, match=r"'3A' is not of the form V39A"):
        apply_mutations(WT, "3A")
    assert issubclass(MutationError, ValueError)


def test_mutant_lists_positions_and_files_are_parsed(tmp_path):
    assert parse_mutants("V3A, M1A:V3C\nWT", WT) == [
        [Mutation(3, "V", "A")],
        [Mutation(1, "M", "A"), Mutation(3, "V", "C")],
        [],
    ]
    assert parse_mutants("V102A", WT, offset=100) == [[Mutation(3, "V", "A")]]
    with pytest.raises(MutationError, match="position 3 is mutated twice"):
        parse_mutants("V3A:V3C", WT)
    with pytest.raises(MutationError, match="no mutants"):
        parse_mutants(" , ", WT)
    assert parse_positions("2-4,4,13", 13) == [2, 3, 4, 13]
    assert parse_positions("101-102", 13, offset=100) == [2, 3]
    for text, message in [
        ("5-3", "runs backwards"),
        ("0-3", r"numbered 1\.\.13"),
        ("a-b", "expected N or N-M"),
    ]:
        with pytest.raises(MutationError, match=message):
            parse_positions(text, 13)
    plain = tmp_path / "m.txt"
    plain.write_text("# my mutants\nV3A,D10G\n\nM1A:V3C\n")
    assert read_mutants_file(plain, WT) == parse_mutants("V3A,D10G,M1A:V3C", WT)
    table = tmp_path / "m.csv"
    table.write_text("mutant,DMS_score\nV3A,1.0\nM1A:V3C,0.5\n,0\n")
    assert read_mutants_file(table, WT) == parse_mutants("V3A,M1A:V3C,WT", WT)
    table.write_text("mutant,DMS_score\nV3A,1.0\nK3A,0.5\n")
    with pytest.raises(MutationError, match=r"m\.csv line 3: mutation 'K3A': the wild type has 'V'"):
        read_mutants_file(table, WT)


def test_a_mutation_list_scores_as_score_mutants():
    model = tiny_model("mlm")
    rows = score_mutation_list(model, TOKENIZER, WT, "V3A,M1A:V3C,WT,D10G", max_tokens=40, progress=False)
    expected = score_mutants(model, TOKENIZER, WT, parse_mutants("V3A,M1A:V3C,WT,D10G", WT), progress=False)
    assert [row["score"] for row in rows] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert rows[1] == {
        "mutant": "M1A:V3C", "position": "1:3", "wildtype": "M:V", "mutant_aa": "A:C",
        "score": rows[1]["score"],
    }  # fmt: skip
    assert rows[2]["mutant"] == "WT" and rows[2]["score"] == 0.0
    m1a, v3c = (
        row["score"] for row in score_mutation_list(model, TOKENIZER, WT, ["M1A", "V3C"], progress=False)
    )
    assert m1a + v3c == pytest.approx(rows[1]["score"], rel=1e-12)  # a multi-mutant: the sum of its singles
    shifted = score_mutation_list(model, TOKENIZER, WT, ["V102A"], offset=100, progress=False)
    assert shifted[0]["mutant"] == "V102A" and shifted[0]["position"] == "102"
    assert shifted[0]["score"] == pytest.approx(rows[0]["score"], rel=1e-12)


@pytest.mark.parametrize("strategy", ["masked-marginals", "wt-marginals"])
def test_every_scan_entry_is_the_masked_marginal_of_that_mutant_alone(strategy):
    model = tiny_model("mlm", position="rotary")
    # A budget of 40 tokens (15 per copy): the 13 masked copies run as several batches of 2.
    scan = saturation_scan(model, TOKENIZER, WT, strategy=strategy, max_tokens=40, progress=False)
    assert scan.scores.shape == (13, 20) and scan.scores.dtype == torch.float64
    assert scan.positions == list(range(1, 14)) and scan.amino_acids == AMINO_ACIDS
    rows = scan.to_rows()
    assert len(rows) == 13 * 19 and all(row["mutant_aa"] != row["wildtype"] for row in rows)
    # One scoring call per mutant, nothing shared with the scan's batches.
    for p in (1, 7, 13):
        for aa in AMINO_ACIDS:
            alone = score_mutants(model, TOKENIZER, WT, [[Mutation(p, WT[p - 1], aa)]], strategy=strategy,
                                  progress=False)[0]  # fmt: skip
            assert scan.score(p, aa) == pytest.approx(alone, rel=1e-12, abs=1e-12)
    everything = [[Mutation(int(r["position"]), r["wildtype"], r["mutant_aa"])] for r in rows]
    together = score_mutants(model, TOKENIZER, WT, everything, strategy=strategy, progress=False)
    assert [row["score"] for row in rows] == pytest.approx(together, rel=1e-12, abs=1e-12)
    for p in range(1, 14):
        assert scan.score(p, WT[p - 1]) == 0.0


def test_a_scan_of_some_positions_numbered_from_an_offset():
    model = tiny_model("mlm")
    whole = saturation_scan(model, TOKENIZER, WT, progress=False)
    part = saturation_scan(model, TOKENIZER, WT, positions="101-102", offset=100, progress=False)
    assert part.positions == [2, 3] and part.numbers() == [101, 102]
    torch.testing.assert_close(part.scores, whole.scores[1:3], rtol=1e-12, atol=1e-12)
    assert part.to_rows()[0]["mutant"] == "K101A" and part.to_rows()[0]["position"] == "101"
    assert saturation_scan(
        model, TOKENIZER, WT, positions=[101, 102], offset=100, progress=False
    ).positions == [2, 3]
    with pytest.raises(MutationError, match=r"numbered 100\.\.112"):
        saturation_scan(model, TOKENIZER, WT, positions="10-20", offset=100, progress=False)
    with pytest.raises(ValueError, match="pseudo-ppl"):
        saturation_scan(model, TOKENIZER, WT, strategy="pseudo-ppl", progress=False)


def test_a_causal_scan_is_the_log_likelihood_ratio_of_each_mutant():
    model = tiny_model("clm")
    scan = saturation_scan(model, TOKENIZER, WT, positions="2-3", progress=False)
    assert scan.strategy == "log-likelihood-ratio"
    singles = [[Mutation(p, WT[p - 1], aa)] for p in (2, 3) for aa in AMINO_ACIDS]
    expected = score_mutants(model, TOKENIZER, WT, singles, progress=False)
    assert scan.scores.flatten().tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_the_heatmap_is_a_png_of_the_expected_size(tmp_path):
    pytest.importorskip("matplotlib")
    scan = saturation_scan(tiny_model("mlm"), TOKENIZER, WT, progress=False)
    path = plot_saturation(scan, tmp_path / "scan.png")
    width, height = figure_size(13)
    assert png_size(path) == (round(width * DPI), round(height * DPI))
    assert 500 <= png_size(path)[0] <= 700 and 300 <= png_size(path)[1] <= 450
    # A long protein: panels of per_row positions, one above the other, in a taller figure.
    long = type(scan)(WT * 4, list(range(1, 46)), AMINO_ACIDS, torch.randn(45, 20, dtype=torch.float64),
                      "masked-marginals")  # fmt: skip
    tall = png_size(plot_saturation(long, tmp_path / "long.png", per_row=20))
    assert tall == (round(figure_size(45, 20)[0] * DPI), round(figure_size(45, 20)[1] * DPI))
    assert tall[1] > 2.5 * png_size(path)[1]  # three panels
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # written atomically


def test_the_blosum62_baseline_is_the_sum_over_substitutions():
    mutants = parse_mutants("V3A,M1A:V3C,WT,D10G", WT)
    # BLOSUM62: V→A 0, M→A -1, V→C -1, D→G -1.
    assert blosum62_scores(mutants) == [0.0, -2.0, 0.0, -1.0]
    assert blosum62_scores([[Mutation(1, "M", "X")]]) == [None]
    targets = [0.5, -1.0, None, 2.0]
    rho, count = blosum62_spearman(mutants, targets)
    # By hand: scores 0, -2, -1 have ranks 3, 1, 2; targets 0.5, -1, 2 ranks 2, 1, 3.
    expected = 1 - 6 * ((3 - 2) ** 2 + 0 + (2 - 3) ** 2) / (3 * (3**2 - 1))
    assert count == 3 and rho == pytest.approx(expected, rel=1e-12)
    assert (rho, count) == dms_spearman([0.0, -2.0, -1.0], [0.5, -1.0, 2.0])
    assert math.isnan(blosum62_spearman([[Mutation(1, "M", "X")]], [1.0])[0])


def test_parse_mutations_takes_an_offset():
    assert parse_mutations("V102A", WT, offset=100) == [Mutation(3, "V", "A")]
    with pytest.raises(MutationError, match="the first residue is number 100"):
        parse_mutations("M99A", WT, offset=100)


def test_a_hugging_face_esm_scans_and_packs_as_its_own_masked_predictions(tmp_path):
    pytest.importorskip("transformers", reason="needs the [hf] extra (Hugging Face transformers)")
    from performers.jobs import protein_lm_from_directory, pseudo_log_likelihoods
    from performers.jobs.protein_models import load_protein_model
    from performers.jobs.scoring import per_protein_pseudo_log_likelihoods
    from tests.jobs.test_protein_models import _esm

    directory = _esm(tmp_path / "esm")
    lm = protein_lm_from_directory(directory)
    wildtype = "MKTAYIAKQR"
    scan = saturation_scan(lm, None, wildtype, positions="1-3", max_tokens=30, progress=False)
    loaded = load_protein_model(directory)  # the model and tokenizer as Hugging Face has them
    ids = torch.tensor([loaded.tokenizer(wildtype)["input_ids"]])
    code = loaded.tokenizer.convert_tokens_to_ids
    for row, p in enumerate((1, 2, 3)):
        masked = ids.clone()
        masked[0, p] = loaded.tokenizer.mask_token_id  # residue p sits after <cls>
        with torch.no_grad():
            log_probs = torch.log_softmax(loaded.model(input_ids=masked).logits[0, p].double(), -1)
        expected = [float(log_probs[code(aa)] - log_probs[code(wildtype[p - 1])]) for aa in AMINO_ACIDS]
        assert scan.scores[row].tolist() == pytest.approx(expected, abs=1e-5)
    proteins = [wildtype, "MKVLA", "W"]
    packed = pseudo_log_likelihoods(lm, None, proteins, max_tokens=30)
    assert packed == pytest.approx(
        per_protein_pseudo_log_likelihoods(lm, None, proteins, max_tokens=30), rel=1e-5
    )
