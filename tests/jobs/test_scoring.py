"""``performers score`` and :mod:`performers.jobs.scoring`: exact and pseudo
log-likelihoods against naive loops, variant effects, mutation parsing, errors and the CLI."""

import csv
import json
import math

import pytest
import torch

from performers.cli import main
from performers.jobs.scoring import (
    DmsError,
    Mutation,
    find_mutations,
    format_mutations,
    parse_mutations,
    read_dms,
    score_dms,
    score_mutants,
    score_proteins,
    variant_effects,
    write_dms_scores,
)
from performers.utils import write_csv
from tests.jobs.test_embedding import PROTEINS, TOKENIZER, save_model, tiny_model, write_fasta

WILDTYPE = ("WT", "MKVLAAGIVDLLA")
VARIANTS = [
    ("same", "MKVLAAGIVDLLA"),
    ("V3A", "MKALAAGIVDLLA"),
    ("V3C", "MKCLAAGIVDLLA"),
    ("double", "MKALAAGIVGLLA"),
    ("triple", "AKVLAAGIWDLLW"),
]


@torch.no_grad()
def naive_causal_log_likelihood(model, sequence: str) -> float:
    """Σ log p(x_t | x_<t) over residues and <eos> from one plain forward pass."""
    ids = torch.tensor(TOKENIZER.encode(sequence))
    log_probs = torch.log_softmax(model(ids[None]).logits[0, :-1], dim=-1)
    return float(log_probs.gather(-1, ids[1:, None]).sum())


@torch.no_grad()
def naive_pseudo_log_likelihood(model, sequence: str) -> float:
    """Mask one residue at a time, one forward pass each."""
    ids = torch.tensor(TOKENIZER.encode(sequence))
    total = 0.0
    for i in range(1, len(sequence) + 1):
        masked = ids.clone()
        masked[i] = TOKENIZER.mask_id
        total += float(torch.log_softmax(model(masked[None]).logits[0, i], dim=-1)[ids[i]])
    return total


@pytest.mark.parametrize("attention", ["favor", "exact"])
def test_causal_score_is_the_sum_of_next_token_log_probabilities(attention):
    torch.set_num_threads(1)
    model = tiny_model("clm", attention)
    rows = score_proteins(model, TOKENIZER, PROTEINS, max_tokens=40, progress=False)
    assert [row["id"] for row in rows] == [name for name, _ in PROTEINS]
    for row, (_, sequence) in zip(rows, PROTEINS, strict=True):
        expected = naive_causal_log_likelihood(model, sequence)
        assert row["log_likelihood"] == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert row["length"] == len(sequence) and row["terms"] == len(sequence) + 1  # residues + <eos>
        assert row["perplexity"] == pytest.approx(math.exp(-expected / (len(sequence) + 1)), rel=1e-12)
        assert row["method"] == "causal"


@pytest.mark.parametrize("attention", ["favor", "exact"])
def test_pseudo_log_likelihood_equals_a_naive_masking_loop(attention):
    torch.set_num_threads(1)
    model = tiny_model("mlm", attention)
    # A budget of 40 tokens: several masked copies per pass, and several passes per protein.
    rows = score_proteins(model, TOKENIZER, PROTEINS, max_tokens=40, progress=False)
    for row, (_, sequence) in zip(rows, PROTEINS, strict=True):
        expected = naive_pseudo_log_likelihood(model, sequence)
        assert row["log_likelihood"] == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert row["terms"] == len(sequence) and row["method"] == "pseudo"
        assert row["perplexity"] == pytest.approx(math.exp(-expected / len(sequence)), rel=1e-12)


def test_cropping_and_the_position_limit():
    model = tiny_model("clm", max_positions=12)
    # The one cropping rule: beyond the learned positions a protein is cropped, and counted.
    rows = score_proteins(model, TOKENIZER, PROTEINS, progress=False)
    assert rows.crop.cropped == ("P1", "P3") and rows.crop.limit == 10
    assert (rows[0]["length"], rows[0]["scored_length"]) == (14, 10)
    assert rows[0]["log_likelihood"] == pytest.approx(naive_causal_log_likelihood(model, PROTEINS[0][1][:10]))
    asked = score_proteins(model, TOKENIZER, PROTEINS, max_length=8, progress=False)
    assert asked.crop.cropped == ("P1", "P3") and asked[0]["scored_length"] == 6
    assert asked.crop.reason == "max_length 8" and asked[1]["scored_length"] == 3


@torch.no_grad()
def test_masked_marginal_scores():
    model = tiny_model("mlm")
    rows = variant_effects(model, TOKENIZER, WILDTYPE, VARIANTS, max_tokens=40, progress=False)
    assert [row["id"] for row in rows] == [name for name, _ in VARIANTS]
    assert rows[0] == {
        "id": "same",
        "mutations": "",
        "num_mutations": 0,
        "score": 0.0,
        "method": "masked-marginals",
    }
    assert [row["mutations"] for row in rows[1:]] == ["V3A", "V3C", "V3A:D10G", "M1A:V9W:A13W"]
    ids = torch.tensor(TOKENIZER.encode(WILDTYPE[1]))
    for row, (_, variant) in zip(rows[1:], VARIANTS[1:], strict=True):
        # ESM: each mutated position masked on its own in the wild type, one pass each.
        expected = 0.0
        for p in (m.position for m in find_mutations(WILDTYPE[1], variant)):
            masked = ids.clone()
            masked[p] = TOKENIZER.mask_id
            log_probs = torch.log_softmax(model(masked[None]).logits[0, p], dim=-1)
            mutant = TOKENIZER.encode(variant[p - 1], add_special_tokens=False)[0]
            expected += float(log_probs[mutant] - log_probs[ids[p]])
        assert row["score"] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    alone = variant_effects(model, TOKENIZER, WILDTYPE, [VARIANTS[2]], progress=False)
    assert alone[0]["score"] == pytest.approx(rows[2]["score"], rel=1e-12)


def test_causal_log_likelihood_ratio():
    model = tiny_model("clm")
    rows = variant_effects(model, TOKENIZER, WILDTYPE, VARIANTS, max_tokens=30, progress=False)
    assert rows[0]["score"] == 0.0 and rows[0]["method"] == "log-likelihood-ratio"
    wt = naive_causal_log_likelihood(model, WILDTYPE[1])
    for row, (_, variant) in zip(rows[1:], VARIANTS[1:], strict=True):
        assert row["score"] == pytest.approx(
            naive_causal_log_likelihood(model, variant) - wt, rel=1e-10, abs=1e-12
        )
    # A wild type given as a plain string works too.
    assert variant_effects(model, TOKENIZER, WILDTYPE[1], VARIANTS[:1], progress=False)[0]["score"] == 0.0


def test_mutations_are_found_formatted_and_parsed():
    found = find_mutations("MKVLD", "MKALG")
    assert found == [Mutation(3, "V", "A"), Mutation(5, "D", "G")]
    assert format_mutations(found) == "V3A:D5G" and format_mutations([]) == ""
    assert parse_mutations("V3A:D5G") == found == parse_mutations("v3a, D5G", "MKVLD")
    assert parse_mutations("") == []
    with pytest.raises(ValueError, match="'3A' is not of the form"):
        parse_mutations("3A")
    with pytest.raises(ValueError, match="has 'V' at position 3"):
        parse_mutations("K3A", "MKVLD")
    with pytest.raises(ValueError, match="the wild type has 5 residues"):
        parse_mutations("V9A", "MKVLD")
    with pytest.raises(ValueError, match="variant 'short' has 4 residues but the wild type has 5"):
        find_mutations("MKVLD", "MKVL", name="variant 'short'")


def test_variant_errors():
    model = tiny_model("mlm", max_positions=12)
    with pytest.raises(ValueError, match="variant 'short' has 3 residues but the wild type has 13"):
        variant_effects(tiny_model("mlm"), TOKENIZER, WILDTYPE, [*VARIANTS, ("short", "MKV")], progress=False)
    with pytest.raises(ValueError, match=r"'WT' has 13 residues.*at most 10"):
        variant_effects(model, TOKENIZER, WILDTYPE, VARIANTS, progress=False)
    with pytest.raises(ValueError, match="'V3A' appears twice"):
        variant_effects(tiny_model("mlm"), TOKENIZER, WILDTYPE, [*VARIANTS, VARIANTS[1]], progress=False)
    with pytest.raises(TypeError, match="language model"):
        score_proteins(tiny_model("encoder"), TOKENIZER, PROTEINS, progress=False)


def test_write_csv(tmp_path):
    rows = [{"id": "a", "score": 0.1 + 0.2}, {"id": "b", "score": -1.5}]
    path = write_csv(rows, tmp_path / "s.csv")
    assert path.read_text() == "id,score\na,0.30000000000000004\nb,-1.5\n"
    with pytest.raises(ValueError, match="no rows"):
        write_csv([], tmp_path / "t.csv")


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("task", ["mlm", "clm"])
def test_cli_scores_and_variant_effects(tmp_path, capsys, task):
    torch.set_num_threads(1)
    model = tiny_model(task, position="rotary")
    directory = save_model(model.float(), tmp_path / "model")
    fasta = write_fasta(tmp_path / "in.fasta", PROTEINS)
    out = tmp_path / "scores.csv"
    assert main(["score", str(directory), str(fasta), "--out", str(out), "--dtype", "float64"]) == 0
    printed = capsys.readouterr().out
    kind = "pseudo-log-likelihoods" if task == "mlm" else "log-likelihoods (exact"
    assert "wrote 4 " in printed and kind in printed and "proteins/s" in printed
    rows = read_csv(out)
    assert list(rows[0]) == [
        "id",
        "length",
        "scored_length",
        "log_likelihood",
        "perplexity",
        "terms",
        "method",
    ]
    expected = score_proteins(model.double(), TOKENIZER, PROTEINS, progress=False)
    for row, reference in zip(rows, expected, strict=True):
        assert row["id"] == reference["id"]
        assert float(row["log_likelihood"]) == pytest.approx(reference["log_likelihood"], rel=1e-9)

    wildtype = write_fasta(tmp_path / "wt.fasta", [WILDTYPE])
    variants = write_fasta(tmp_path / "variants.fasta", VARIANTS)
    out = tmp_path / "variants.csv"
    assert main(["score", str(directory), str(variants), "--wildtype", str(wildtype), "--out", str(out)]) == 0
    assert "wrote 5 variant scores against WT" in capsys.readouterr().out
    rows = read_csv(out)
    assert list(rows[0]) == ["id", "mutations", "num_mutations", "score", "method"]
    assert (
        rows[0]["score"] == "0.0" and rows[3]["mutations"] == "V3A:D10G" and rows[3]["num_mutations"] == "2"
    )


def test_cli_errors(tmp_path, cli_error):
    directory = save_model(tiny_model("mlm").float(), tmp_path / "model")
    wildtype = write_fasta(tmp_path / "wt.fasta", [WILDTYPE])
    variants = write_fasta(tmp_path / "variants.fasta", [*VARIANTS, ("short", "MKV")])
    out = str(tmp_path / "s.csv")
    cli_error(
        ["score", str(directory), str(variants), "--wildtype", str(wildtype), "--out", out],
        match="variant 'short' has 3 residues",
    )
    two = write_fasta(tmp_path / "two.fasta", VARIANTS[:2])
    cli_error(
        ["score", str(directory), str(variants), "--wildtype", str(two), "--out", out],
        match=r"two\.fasta: expected one record, found 2",
    )
    cli_error(
        [
            "score",
            str(directory),
            str(variants),
            "--wildtype",
            str(wildtype),
            "--out",
            out,
            "--max-length",
            "9",
        ],
        match="--max-length cannot crop variants",
    )
    empty = tmp_path / "empty.fasta"
    empty.write_text("")
    cli_error(["score", str(directory), str(empty), "--out", out], match=r"empty\.fasta: no FASTA records")
    cli_error(
        ["score", str(tmp_path / "missing"), str(wildtype), "--out", out],
        match=r"cannot load the model: .*missing/config\.json",
    )
    assert not (tmp_path / "s.csv").exists()


def test_help_states_the_cost_of_the_pseudo_log_likelihood(capsys):
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "pseudo-log-likelihood" in text and "O(n^2 * M * D)" in text and "n forward passes" in text


# ---- ESM's strategies and ProteinGym DMS files ---------------------------------------------

WT = WILDTYPE[1]  # MKVLAAGIVDLLA


def mutants(*texts):
    return [parse_mutations(text, WT) for text in texts]


@pytest.mark.parametrize("strategy", ["masked-marginals", "wt-marginals"])
def test_a_multi_mutant_scores_the_sum_of_its_single_mutants(strategy):
    model = tiny_model("mlm", position="rotary")
    singles = ["M1A", "V3C", "D10G", "A13W"]
    scores = score_mutants(
        model, TOKENIZER, WT, mutants(*singles, "M1A:V3C:D10G:A13W", "V3C:D10G"), strategy=strategy,
        max_tokens=40, progress=False,
    )  # fmt: skip
    assert scores[4] == pytest.approx(sum(scores[:4]), rel=1e-12, abs=1e-12)
    assert scores[5] == pytest.approx(scores[1] + scores[2], rel=1e-12, abs=1e-12)
    assert len(set(scores[:4])) == 4  # the singles differ: the sums test something


@torch.no_grad()
def test_wt_marginals_read_one_unmasked_pass():
    model = tiny_model("mlm")
    ids = torch.tensor(TOKENIZER.encode(WT))
    log_probs = torch.log_softmax(model(ids[None]).logits[0], dim=-1)
    (score,) = score_mutants(
        model, TOKENIZER, WT, mutants("V3C:D10G"), strategy="wt-marginals", progress=False
    )
    code = {r: TOKENIZER.encode(r, add_special_tokens=False)[0] for r in "VCDG"}
    expected = (
        log_probs[3, code["C"]]
        - log_probs[3, code["V"]]
        + log_probs[10, code["G"]]
        - log_probs[10, code["D"]]
    )
    assert score == pytest.approx(float(expected), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("strategy", ["masked-marginals", "wt-marginals", "pseudo-ppl"])
def test_the_wild_type_and_a_mutant_to_the_wild_type_letter_score_zero(strategy):
    model = tiny_model("mlm")
    scores = score_mutants(
        model, TOKENIZER, WT, [[], *mutants("V3V", "M1M:D10D")], strategy=strategy, progress=False
    )
    assert scores == [0.0, 0.0, 0.0]


def test_pseudo_ppl_is_the_mutant_pseudo_log_likelihood_minus_the_wild_types():
    model = tiny_model("mlm")
    scores = score_mutants(
        model, TOKENIZER, WT, mutants("V3C", "V3C:D10G"), strategy="pseudo-ppl", max_tokens=40, progress=False
    )
    wt = naive_pseudo_log_likelihood(model, WT)
    for score, variant in zip(scores, ["MKCLAAGIVDLLA", "MKCLAAGIVGLLA"], strict=True):
        assert score == pytest.approx(naive_pseudo_log_likelihood(model, variant) - wt, rel=1e-10, abs=1e-12)


def test_strategies_the_model_cannot_compute_are_refused():
    clm, mlm = tiny_model("clm"), tiny_model("mlm")
    (ratio,) = score_mutants(clm, TOKENIZER, WT, mutants("V3C"), progress=False)  # causal default
    expected = naive_causal_log_likelihood(clm, "MKCLAAGIVDLLA") - naive_causal_log_likelihood(clm, WT)
    assert ratio == pytest.approx(expected, rel=1e-10, abs=1e-12)
    with pytest.raises(ValueError, match="'wt-marginals' needs a masked language model"):
        score_mutants(clm, TOKENIZER, WT, mutants("V3C"), strategy="wt-marginals", progress=False)
    with pytest.raises(ValueError, match="'log-likelihood-ratio' needs a causal"):
        score_mutants(mlm, TOKENIZER, WT, mutants("V3C"), strategy="log-likelihood-ratio", progress=False)
    with pytest.raises(ValueError, match="strategy must be one of"):
        score_mutants(mlm, TOKENIZER, WT, mutants("V3C"), strategy="esm1v", progress=False)
    with pytest.raises(ValueError, match=r"mutant 1 \(K3C\): the wild type has 'V' at position 3"):
        score_mutants(mlm, TOKENIZER, WT, [[Mutation(3, "K", "C")]], progress=False)
    with pytest.raises(ValueError, match="residue 'J' is not in the model's vocabulary"):
        score_mutants(mlm, TOKENIZER, WT, [[Mutation(3, "V", "J")]], progress=False)
    with pytest.raises(ValueError, match=r"the wild type has 13 residues.*at most 10.*without windows"):
        score_mutants(tiny_model("mlm", max_positions=12), TOKENIZER, WT, mutants("V3C"), progress=False)


def write_assay(path, rows, header="mutant,DMS_score"):
    path.write_text(header + "\n" + "".join(row + "\n" for row in rows))
    return path


ASSAY = ["V3C,0.5", "M1A:V3C,-1.0", "D10G,2.0", "WT,0.0", "A13W,", "K2K,0.5"]


def test_dms_rows_are_scored_and_compared_with_their_targets(tmp_path):
    model = tiny_model("mlm", position="rotary")
    path = write_assay(tmp_path / "assay.csv", ASSAY)
    result = score_dms(model, TOKENIZER, WT, path, max_tokens=40, progress=False)
    expected = score_mutants(
        model, TOKENIZER, WT, mutants("V3C", "M1A:V3C", "D10G", "", "A13W", "K2K"), progress=False
    )
    assert result.scores == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert result.scores[3] == 0.0 and result.scores[5] == 0.0 and result.strategy == "masked-marginals"
    assert result.assay.targets == [0.5, -1.0, 2.0, 0.0, None, 0.5]
    scipy_stats = pytest.importorskip("scipy.stats")
    kept = [0, 1, 2, 3, 5]  # the row without a target is left out; 0.5 is a tie
    reference = scipy_stats.spearmanr(
        [result.scores[i] for i in kept], [result.assay.targets[i] for i in kept]
    )
    assert result.count == 5 and result.spearman == pytest.approx(reference.statistic, rel=1e-12)
    written = write_dms_scores(result, tmp_path / "scores.csv", metadata={"model": "tiny"})
    assert [p.name for p in written] == ["scores.csv", "scores.spearman.json"]
    rows = read_csv(tmp_path / "scores.csv")
    assert list(rows[0]) == ["mutant", "DMS_score", "score"] and rows[1]["mutant"] == "M1A:V3C"
    assert [float(r["score"]) for r in rows] == result.scores
    summary = json.loads((tmp_path / "scores.spearman.json").read_text())
    assert summary["count"] == 5 and summary["spearman"] == result.spearman and summary["model"] == "tiny"

    # Without the target column: scores only, no Spearman and no file beside them.
    bare = write_assay(tmp_path / "bare.csv", ["V3C", "D10G"], header="mutant")
    result = score_dms(model, TOKENIZER, WT, bare, progress=False)
    assert result.spearman is None and result.count is None and result.scores == pytest.approx(expected[:3:2])
    assert [p.name for p in write_dms_scores(result, tmp_path / "bare_scores.csv")] == ["bare_scores.csv"]
    assert not (tmp_path / "bare_scores.spearman.json").exists()


def test_the_offset_numbers_the_first_residue(tmp_path):
    model = tiny_model("mlm")
    plain = score_dms(model, TOKENIZER, WT, write_assay(tmp_path / "a.csv", ASSAY[:3]), progress=False)
    shifted_rows = ["V102C,0.5", "M100A:V102C,-1.0", "D109G,2.0"]  # residue 1 is number 100
    shifted = score_dms(
        model, TOKENIZER, WT, write_assay(tmp_path / "b.csv", shifted_rows), offset=100, progress=False
    )
    assert shifted.scores == plain.scores and shifted.assay.mutants == plain.assay.mutants
    with pytest.raises(
        DmsError, match=r"b\.csv line 2 \(mutant 'V102C'\): position 102 is outside the wild type"
    ):
        read_dms(tmp_path / "b.csv", WT)  # offset 1: number 102 is beyond 13 residues


@pytest.mark.parametrize(
    "row, message",
    [
        ("K3C,1", r"line 3 \(mutant 'K3C'\): the wild type has 'V' at position 3, not 'K'"),
        ("V14C,1", r"line 3 \(mutant 'V14C'\): position 14 is outside the wild type .*numbered 1\.\.13"),
        ("V0C,1", r"line 3 \(mutant 'V0C'\): position 0 is outside"),
        ("V3,1", r"line 3 \(mutant 'V3'\): 'V3' is not a substitution of the form A12G"),
        ("V3C:V3A,1", r"line 3 \(mutant 'V3C:V3A'\): position 3 is mutated twice"),
        ("V3C,high", r"line 3 \(mutant 'V3C'\): target 'high' is not a number"),
        ("V3J,1", r"line 3 \(mutant 'V3J'\): residue 'J' is not in the model's vocabulary"),
    ],
)
def test_bad_dms_rows_are_refused_naming_the_line(tmp_path, row, message):
    path = write_assay(tmp_path / "assay.csv", ["M1A,0.1", row])
    with pytest.raises(DmsError, match=message):
        score_dms(tiny_model("mlm"), TOKENIZER, WT, path, progress=False)


def test_dms_columns(tmp_path):
    path = write_assay(tmp_path / "assay.csv", ["M1A,0.1"], header="variant,fitness")
    with pytest.raises(
        DmsError, match=r"no column 'mutant' \(--mutation-col\); its columns are variant, fitness"
    ):
        read_dms(path, WT)
    assay = read_dms(path, WT, mutation_col="variant", target_col="fitness")
    assert assay.mutants == [[Mutation(1, "M", "A")]] and assay.targets == [0.1]
    assert read_dms(path, WT, mutation_col="variant").targets is None  # DMS_score absent: no targets
    with pytest.raises(DmsError, match=r"no column 'DMS_score' \(--target-col\)"):
        read_dms(path, WT, mutation_col="variant", require_target=True)
    with pytest.raises(DmsError, match="no rows"):
        read_dms(write_assay(tmp_path / "empty.csv", []), WT)
    taken = write_assay(tmp_path / "taken.csv", ["M1A,1"], header="mutant,score")
    result = score_dms(tiny_model("mlm"), TOKENIZER, WT, taken, progress=False)
    with pytest.raises(DmsError, match="already has a column 'score'"):
        write_dms_scores(result, tmp_path / "out.csv")


def test_cli_scores_a_dms_file(tmp_path, capsys, cli_error):
    model = tiny_model("mlm", position="rotary")
    directory = save_model(model.float(), tmp_path / "model")
    wildtype = write_fasta(tmp_path / "wt.fasta", [WILDTYPE])
    assay = write_assay(tmp_path / "assay.csv", ASSAY)
    out = tmp_path / "scores.csv"
    base = ["score", str(directory), "--dms", str(assay), "--wildtype", str(wildtype), "--out", str(out)]
    assert main([*base, "--dtype", "float64", "--strategy", "wt-marginals"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 6 variant scores (wt-marginals)" in printed and str(out) in printed
    reference = score_dms(model.double(), TOKENIZER, WT, assay, strategy="wt-marginals", progress=False)
    assert f"Spearman {reference.spearman:.4f} between score and DMS_score over 5 rows" in printed
    assert [float(r["score"]) for r in read_csv(out)] == pytest.approx(reference.scores, rel=1e-9, abs=1e-12)
    summary = json.loads((tmp_path / "scores.spearman.json").read_text())
    assert summary["strategy"] == "wt-marginals" and summary["count"] == 5

    shifted = write_assay(tmp_path / "shifted.csv", ["1.0,V12C", "2.0,D19G"], header="fitness,variant")
    args = ["--mutation-col", "variant", "--target-col", "fitness", "--offset", "10"]
    out2 = tmp_path / "shifted_scores.csv"
    assert (
        main(
            [
                "score",
                str(directory),
                "--dms",
                str(shifted),
                "--wildtype",
                str(wildtype),
                "--out",
                str(out2),
                *args,
            ]
        )
        == 0
    )
    assert "over 2 rows" in capsys.readouterr().out

    err = [*base[:-1], str(tmp_path / "e.csv")]
    cli_error([*err[:2], "x.fasta", *err[2:]], match="give a FASTA input or --dms, not both")
    cli_error(
        ["score", str(directory), "--dms", str(assay), "--out", str(tmp_path / "e.csv")],
        match="--dms needs --wildtype",
    )
    cli_error(["score", str(directory), "--out", str(tmp_path / "e.csv")], match="required: input")
    cli_error([*err, "--target-col", "fitness"], match=r"no column 'fitness' \(--target-col\)")
    cli_error([*err, "--offset", "0"], match=r"line 2 \(mutant 'V3C'\): the wild type has 'L' at position 3")
    cli_error(
        [*err, "--strategy", "log-likelihood-ratio"],
        match="--strategy: strategy 'log-likelihood-ratio' needs a causal",
    )
    fasta_mode = ["score", str(directory), str(wildtype), "--out", str(tmp_path / "e.csv")]
    cli_error([*fasta_mode, "--offset", "2"], match="--offset read a --dms file")
    cli_error([*fasta_mode, "--strategy", "pseudo-ppl"], match="--strategy scores variants: give --wildtype")
    cli_error(
        [*err[:3], str(tmp_path / "missing.csv"), *err[4:]], match=r"--dms .*missing\.csv: No such file"
    )
    assert not (tmp_path / "e.csv").exists()
