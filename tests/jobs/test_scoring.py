"""``performers score`` and :mod:`performers.jobs.scoring`: exact and pseudo
log-likelihoods against naive loops, variant effects, mutation parsing, errors and the CLI."""

import csv
import math

import pytest
import torch

from performers.cli import main
from performers.jobs.scoring import (
    Mutation,
    find_mutations,
    format_mutations,
    parse_mutations,
    score_proteins,
    variant_effects,
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
    with pytest.raises(ValueError, match=r"'P1' has 14 residues.*at most 10"):
        score_proteins(model, TOKENIZER, PROTEINS, progress=False)
    rows = score_proteins(model, TOKENIZER, PROTEINS, max_length=12, progress=False)
    assert rows[0]["length"] == 10
    assert rows[0]["log_likelihood"] == pytest.approx(naive_causal_log_likelihood(model, PROTEINS[0][1][:10]))


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
    assert list(rows[0]) == ["id", "length", "log_likelihood", "perplexity", "terms", "method"]
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
