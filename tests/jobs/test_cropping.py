"""The one cropping rule (performers.jobs.cropping) in evaluate, embed and score, and the
baselines of results.json (train, evaluate) against a hand computation of the unigram.

Tiny random models (tests/jobs/test_embedding.py's builders): what is checked is which residues
each command reads, what it counts and reports, and that a protein's numbers do not depend on
the proteins evaluated beside it."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter

import pytest
import torch

from performers import FavorConfig
from performers.cli import main
from performers.jobs import evaluate_model, evaluate_proteins, protein_model_config, run_training
from performers.jobs.cropping import LEARNED_POSITIONS, CropReport, crop_plan
from performers.jobs.embedding import embed_proteins
from performers.jobs.scoring import score_proteins, variant_effects
from performers.proteins import evaluation_batches
from performers.training import TrainingConfig
from performers.utils import IGNORE_INDEX
from tests.jobs.test_embedding import PROTEINS, TOKENIZER, save_model, tiny_model, write_fasta

LONG = "ACDEFGHIKLMNPQRSTVWY" * 2  # 40 residues, past a 16-position model's training length
# The per-protein losses are summed in float32 (training.evaluation.row_token_metrics), in
# another order than the batch-wide sum: a few float32 ulps over tens of terms.
F32 = 1e-6


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _read_csv(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ---- the rule ---------------------------------------------------------------------------------


def test_the_rule_crops_only_when_asked_or_at_learned_positions():
    ids, lengths = ["a", "b", "c"], [5, 12, 30]
    assert crop_plan(ids, lengths, None).cropped == ()  # rotary: never
    learned = crop_plan(ids, lengths, 10)
    assert learned.cropped == ("b", "c") and learned.limit == 10 and learned.reason == LEARNED_POSITIONS
    assert learned.messages() == [
        "cropped 2 of 3 proteins to 10 residues (the model's learned positions): b, c"
    ]
    asked = crop_plan(ids, lengths, None, max_length=8)  # tokens: 6 residues
    assert asked.cropped == ("b", "c") and asked.limit == 6 and asked.reason == "max_length 8"
    assert crop_plan(ids, lengths, None, truncation_length=6) == CropReport(
        proteins=3, limit=6, reason="truncation_length 6", cropped=("b", "c")
    )
    assert [learned.scored_length(n) for n in lengths] == [5, 10, 10]
    with pytest.raises(ValueError, match="max_length 13 exceeds the model's maximum length 12"):
        crop_plan(ids, lengths, 10, max_length=13)
    with pytest.raises(ValueError, match="give one"):
        crop_plan(ids, lengths, None, max_length=8, truncation_length=6)
    many = crop_plan([f"p{i}" for i in range(8)], [20] * 8, 10)
    assert many.messages()[0].endswith("p0, p1, p2, p3, p4 and 3 more")


# ---- evaluate -----------------------------------------------------------------------------------


def test_a_rotary_model_evaluates_a_long_protein_whole():
    model = tiny_model("clm", position="rotary", max_positions=16)  # trained length 16 tokens
    evaluation = evaluate_proteins(model, TOKENIZER, [LONG, "MKV"], ["long", "short"])
    long_row = evaluation.rows[0]
    assert evaluation.crop.cropped == () and (long_row["length"], long_row["scored_length"]) == (40, 40)
    assert long_row["tokens"] == 41  # every next token: 40 residues and <eos>, none cropped away
    alone = evaluate_proteins(model, TOKENIZER, [LONG], ["long"]).rows[0]
    assert alone["loss"] == pytest.approx(long_row["loss"], rel=F32)


def test_max_length_crops_when_asked_and_counts_it():
    model = tiny_model("clm", position="rotary", max_positions=16)
    evaluation = evaluate_proteins(model, TOKENIZER, [LONG, "MKV"], ["long", "short"], max_length=12)
    assert evaluation.crop.cropped == ("long",) and evaluation.crop.limit == 10
    row = evaluation.rows[0]
    assert (row["length"], row["scored_length"], row["tokens"]) == (40, 10, 11)
    cropped_alone = evaluate_proteins(model, TOKENIZER, [LONG[:10]], ["long"]).rows[0]
    assert row["loss"] == pytest.approx(cropped_alone["loss"], rel=F32)


def test_proteins_not_cropped_give_the_same_numbers():
    sequences = [sequence for _, sequence in PROTEINS]
    ids = [name for name, _ in PROTEINS]
    # Causal: the earlier aggregate path (evaluate_model, unchanged) at the model's own length.
    causal = tiny_model("clm", max_positions=64)
    old = evaluate_model(causal, TOKENIZER, sequences, task="clm", max_length=64)
    new = evaluate_proteins(causal, TOKENIZER, sequences, ids).summary
    assert new["tokens"] == old["tokens"] and new["accuracy"] == pytest.approx(old["accuracy"], abs=1e-12)
    assert new["perplexity"] == pytest.approx(old["perplexity"], rel=F32)
    # Masked: each protein's masks are its own — the same rows beside an uncropped long protein,
    # in batches of one, and the same aggregate as evaluate_model's fixed batches.
    masked = tiny_model("mlm", position="rotary", max_positions=16)
    alone = evaluate_proteins(masked, TOKENIZER, sequences, ids)
    beside = evaluate_proteins(masked, TOKENIZER, [*sequences, LONG], [*ids, "long"], batch_size=2)
    one_by_one = evaluate_proteins(masked, TOKENIZER, sequences, ids, batch_size=1)
    for rows in (beside.rows[: len(alone.rows)], one_by_one.rows):
        for a, b in zip(alone.rows, rows, strict=True):
            assert a["id"] == b["id"] and a["tokens"] == b["tokens"]
            assert a["loss"] == pytest.approx(b["loss"], rel=F32) and a["accuracy"] == b["accuracy"]
    old = evaluate_model(masked, TOKENIZER, sequences, task="mlm", max_length=31)  # the longest: 29
    assert alone.summary["tokens"] == old["tokens"]
    assert alone.summary["perplexity"] == pytest.approx(old["perplexity"], rel=F32)


def test_evaluate_crops_at_learned_positions_and_skips_what_has_nothing_to_score(tmp_path, capsys):
    """A learned-position model crops (counted; true and scored lengths in the CSV); 1-residue
    proteins none of whose residues was drawn for masking are listed, not given a NaN row."""
    proteins = [*PROTEINS, ("S1", "M"), ("S2", "K"), ("S3", "W"), ("S4", "A"), ("S5", "G")]
    directory = save_model(tiny_model("mlm", max_positions=12).float(), tmp_path / "model")
    fasta = write_fasta(tmp_path / "in.fasta", proteins)
    rows_csv = tmp_path / "rows.csv"
    argv = ["evaluate", str(directory), "--data", str(fasta), "--per-sequence", str(rows_csv)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "cropped 2 of 9 proteins to 10 residues (the model's learned positions): P1, P3" in out
    # The reference: which proteins the fixed evaluation batches mask nothing of.
    cropped = [sequence[:10] for _, sequence in proteins]
    batches = evaluation_batches(cropped, TOKENIZER, task="mlm", max_length=12, batch_size=16)
    masked = torch.cat([(b["labels"] != IGNORE_INDEX).sum(-1) for b in batches]).tolist()
    empty = [name for (name, _), n in zip(proteins, masked, strict=True) if n == 0]
    assert empty, "the test needs a protein with no masked residue"
    assert f"skipped {len(empty)} of 9 proteins with nothing to score" in out
    rows = _read_csv(rows_csv)
    assert [row["id"] for row in rows] == [name for (name, _), n in zip(proteins, masked, strict=True) if n]
    assert all(math.isfinite(float(row["loss"])) and int(row["tokens"]) > 0 for row in rows)
    by_id = {row["id"]: row for row in rows}
    if "P1" in by_id:
        assert (by_id["P1"]["length"], by_id["P1"]["scored_length"]) == ("14", "10")
    results = json.loads((tmp_path / "rows.results.json").read_text())
    assert results["command"] == "evaluate" and results["crop"]["skipped_ids"] == empty


# ---- embed and score ------------------------------------------------------------------------------


def test_embed_and_score_obey_the_same_rule(tmp_path, capsys):
    learned = tiny_model("clm", max_positions=12)  # at most 10 residues
    embeddings = embed_proteins(learned, TOKENIZER, PROTEINS, per_residue=True, progress=False)
    assert embeddings.crop.cropped == ("P1", "P3") and embeddings["P3"].shape[0] == 10
    rotary = tiny_model("clm", position="rotary", max_positions=12)
    whole = embed_proteins(rotary, TOKENIZER, PROTEINS, per_residue=True, progress=False)
    assert whole.crop.cropped == () and whole["P3"].shape[0] == 29
    scores = score_proteins(learned, TOKENIZER, PROTEINS, progress=False)
    assert scores.crop.cropped == ("P1", "P3") and scores[2]["scored_length"] == 10
    # Variants keep their positions: a wild type beyond the learned positions is refused.
    with pytest.raises(ValueError, match="learned positions allow at most 10"):
        variant_effects(learned, TOKENIZER, PROTEINS[0], [("v", "A" + PROTEINS[0][1][1:])], progress=False)
    directory = save_model(learned.float(), tmp_path / "model")
    fasta = write_fasta(tmp_path / "in.fasta", PROTEINS)
    assert main(["score", str(directory), str(fasta), "--out", str(tmp_path / "s.csv")]) == 0
    assert (
        "cropped 2 of 4 proteins to 10 residues (the model's learned positions): P1, P3"
        in capsys.readouterr().out
    )
    assert [(r["length"], r["scored_length"]) for r in _read_csv(tmp_path / "s.csv")][:2] == [
        ("14", "10"),
        ("3", "3"),
    ]
    assert (
        main(["embed", str(directory), str(fasta), "--out", str(tmp_path / "e.npz"), "--max-length", "6"])
        == 0
    )
    assert "cropped 2 of 4 proteins to 4 residues (max_length 6): P1, P3" in capsys.readouterr().out


# ---- baselines ------------------------------------------------------------------------------------


def _hand_unigram(train: list[str], scored: list[str]) -> tuple[float, float]:
    """Accuracy and perplexity of the add-one unigram of ``train`` on ``scored``, by hand."""
    letters = TOKENIZER.residues
    counts = Counter("".join(train))
    total = sum(counts[c] for c in letters) + len(letters)
    top = max(letters, key=lambda c: counts[c])
    residues = "".join(scored)
    nll = -sum(math.log((counts[c] + 1) / total) for c in residues)
    return residues.count(top) / len(residues), math.exp(nll / len(residues))


def test_results_json_baselines_are_the_unigram_of_the_training_split(tmp_path, capsys):
    train = ["LLLLAKV", "MLLKLLAG", "LLWLLP", "KLLLMAQE", "LLVLLTS", "ALLLLDK", "LMLLNV", "QLLLRL"]
    valid = ["MKVLLAKLLPQRSTLLAG", "AKLLPWWLLKKMMLLA"]
    test = ["MKTAYIAKQRLLLLLLLLLWWW", "GGGLLAKLVVLLKLLE", "KVLLAAMMLLKWWLQP"]
    corpus = tmp_path / "corpus.fasta"
    records = [("train", train), ("valid", valid), ("test", test)]
    corpus.write_text(
        "".join(f">{s}{i} split={s}\n{seq}\n" for s, seqs in records for i, seq in enumerate(seqs))
    )
    config = protein_model_config(
        d_model=16, num_layers=1, num_heads=2, d_ff=32, max_length=16, favor=FavorConfig(8)
    )
    training = TrainingConfig(
        task="mlm", max_steps=1, batch_size=4, max_length=16, eval_every=1, log_every=100
    )
    run = tmp_path / "run"
    result = run_training(config, training, out_dir=run, corpus=corpus, log=lambda _: None)
    written = json.loads((run / "results.json").read_text())
    accuracy, perplexity = _hand_unigram(train, [s[:14] for s in test])  # as the run read them
    assert written["command"] == "train" and written["metrics"]["accuracy"]["baseline"] == pytest.approx(
        accuracy
    )
    assert written["metrics"]["perplexity"]["baseline"] == pytest.approx(perplexity, rel=1e-12)
    assert written["metrics"]["accuracy"]["value"] == pytest.approx(result.test["accuracy"])
    assert written["metrics"]["accuracy"]["baseline_name"] == "unigram (training split)"
    # evaluate of the run: the model's own training unigram, on the evaluated (cropped) residues.
    data = write_fasta(tmp_path / "eval.fasta", [("e1", "WWWWKLLA" * 4), ("e2", LONG)])
    argv = ["evaluate", str(run), "--data", str(data), "--results", str(tmp_path / "ev.json")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "(unigram (the model's training split) " in printed and "cropped 2 of 2 proteins to 14" in printed
    evaluated = json.loads((tmp_path / "ev.json").read_text())
    accuracy, perplexity = _hand_unigram(train, [("WWWWKLLA" * 4)[:14], LONG[:14]])
    assert evaluated["metrics"]["accuracy"]["baseline"] == pytest.approx(accuracy)
    assert evaluated["metrics"]["perplexity"]["baseline"] == pytest.approx(perplexity, rel=1e-12)
    assert evaluated["metrics"]["accuracy"]["baseline_name"] == "unigram (the model's training split)"
    # train's results.json is never replaced by another command's.
    assert main([*argv[:-1], str(run / "results.json")]) == 2
    assert "holds the results of another command (train)" in capsys.readouterr().err
