"""From a fine-tuned model to answers (issue 32, items 1-2): ``finetune`` writes ``final/`` (loaded by
the one protein-model loader), ``test_predictions.csv`` and ``results.json`` (each metric beside a
baseline computed here by hand on the same data); ``predict_proteins`` / ``performers predict``
reproduce the model's own evaluation; a resumed run ends with the weights of an uninterrupted one.

Tiny encoders (d_model 16, one layer) on a handful of small proteins labelled in FLIP's layout
(the shipped FLIP tasks run in tests/cli): each run takes a fraction of a second."""

from __future__ import annotations

import csv
import json
import math
import random

import pytest
import torch

from performers import FavorConfig, PerformerModel
from performers.cli import main
from performers.jobs import finetune, load_protein_model, predict_proteins, protein_model_config
from performers.jobs.finetuning import evaluate_labelled
from performers.jobs.prediction import NotAFinetunedModelError
from performers.jobs.protein_models import NotALanguageModelError
from performers.jobs.proteins import load_trained
from performers.jobs.results_file import read_results
from performers.proteins import LabelledExamples, ProteinTokenizer, ResidueLabels, SequenceTargets
from performers.training import TrainingConfig


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _encoder(position: str = "rotary", max_length: int = 64) -> PerformerModel:
    config = protein_model_config(
        d_model=16, num_layers=1, num_heads=2, d_ff=32, max_length=max_length, position=position,
        favor=FavorConfig(8, redraw_every=2),
    )  # fmt: skip
    torch.manual_seed(0)
    return PerformerModel(config)


def _training(steps: int, **overrides) -> TrainingConfig:
    options = {"max_steps": steps, "batch_size": 4, "max_length": 48, "learning_rate": 3e-3,
               "warmup_steps": 0, "schedule": "constant", "eval_every": 2, "eval_batches": 1,
               "log_every": 100, "tensorboard": False}  # fmt: skip
    return TrainingConfig(**{**options, **overrides})


RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
SIZES = {"train": 12, "valid": 4, "test": 4}


def _proteins(rng: random.Random, count: int, split: str) -> list[tuple[str, str]]:
    return [(f"{split}{i}", "".join(rng.choices(RESIDUES, k=rng.randint(20, 60)))) for i in range(count)]


def _splits(task: str, seed: int = 0, **sizes: int) -> dict[str, ResidueLabels | SequenceTargets]:
    """Small labelled splits in FLIP's layout (reading a shipped FLIP file takes a second):
    ``"secondary_structure"`` — H/E/C labels, coil the most frequent, one residue in ten not
    scored (unresolved); ``"regression"`` — one distinct target per protein."""
    rng = random.Random(seed)
    out: dict[str, ResidueLabels | SequenceTargets] = {}
    for split, count in {**SIZES, **sizes}.items():
        proteins = _proteins(rng, count, split)
        ids, sequences = [name for name, _ in proteins], [seq for _, seq in proteins]
        if task == "regression":
            out[split] = SequenceTargets(ids, sequences, [rng.uniform(-2, 2) for _ in proteins])
            continue
        labels = ["".join(rng.choices("HEC", weights=(3, 2, 5), k=len(seq))) for seq in sequences]
        scored = ["".join("0" if rng.random() < 0.1 else "1" for _ in seq) for seq in sequences]
        out[split] = ResidueLabels(ids, sequences, labels, scored, "HEC")
    return out


@pytest.fixture(scope="module")
def secondary_structure(tmp_path_factory):
    """A run directory of a finished fine-tuning on FLIP secondary structure, and its splits."""
    out = tmp_path_factory.mktemp("ss")
    splits = _splits("secondary_structure")
    torch.set_num_threads(1)
    result = finetune(_encoder(), _training(4), **splits, out_dir=out, log=lambda _: None)
    return out, splits, result


def _read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _accuracy(labels_by_protein: list[str], test) -> tuple[int, int]:
    """(right, scored) of predicted label strings against the test split, by hand."""
    right = counted = 0
    for predicted, truth, scored in zip(labels_by_protein, test.labels, test.scored, strict=True):
        for p, t, s in zip(predicted, truth, scored, strict=False):
            if s == "1":
                counted += 1
                right += p == t
    return right, counted


def test_finetune_writes_a_model_the_one_loader_loads(secondary_structure):
    out, _, result = secondary_structure
    final = out / "final"
    assert result["final"] == final
    names = {p.name for p in final.iterdir()}
    assert {"config.json", "head.safetensors", "tokenizer.json", "encoder"} <= names
    config = json.loads((final / "config.json").read_text())
    assert config["task"] == "tokens" and config["classes"] == ["H", "E", "C"] and config["num_classes"] == 3
    assert config["metric"] == "q3" and config["pooling"] == "none"
    for path in (out, final):  # the run directory or final/ itself
        loaded = load_protein_model(path)
        assert (loaded.kind, loaded.source, loaded.family) == ("token_classifier", "finetuned", "performer")
        assert loaded.path == final and loaded.backbone.kind == "encoder"
    # The loaded weights are the trained ones: the probabilities of the model that finished training.
    predictions = result["predictions"]
    again = predict_proteins(out, [(p.id, p.sequence) for p in predictions.proteins])
    for before, after in zip(predictions.proteins, again.proteins, strict=True):
        assert before.labels == after.labels
        torch.testing.assert_close(before.probabilities, after.probabilities)


def test_predict_reproduces_the_models_own_test_evaluation(secondary_structure, tmp_path):
    out, splits, result = secondary_structure
    test = splits["test"]
    fasta = tmp_path / "test.fasta"
    fasta.write_text("".join(f">{i}\n{s}\n" for i, s in zip(test.ids, test.sequences, strict=True)))
    assert main(["predict", str(out), str(fasta), "--out", str(tmp_path / "p.csv"), "--threads", "1"]) == 0
    rows = _read_csv(tmp_path / "p.csv")
    assert [r["id"] for r in rows] == test.ids
    assert all(
        int(r["predicted_length"]) == int(r["length"]) == len(s)
        for r, s in zip(rows, test.sequences, strict=True)
    )
    right, counted = _accuracy([r["labels"] for r in rows], test)
    # The model's own evaluation, through the trainer's evaluate_tokens on whole proteins.
    model = load_protein_model(out).model
    longest = max(map(len, test.sequences)) + 2
    own = evaluate_labelled(model, LabelledExamples(test, ProteinTokenizer(), longest), batch_size=2)
    assert counted == own["tokens"] and right / counted == pytest.approx(own["accuracy"], abs=0.5 / counted)
    results = read_results(out / "results.json")
    assert results["command"] == "finetune" and set(results["metrics"]) == {"q3"}
    assert (
        results["metrics"]["q3"]["value"] == pytest.approx(right / counted)
        and results["metrics"]["q3"]["count"] == counted
    )
    assert result["test"]["q3"] == pytest.approx(right / counted)
    # finetune's own test predictions are predict's rows plus the truth.
    written = _read_csv(out / "test_predictions.csv")
    assert [r["labels"] for r in written] == [r["labels"] for r in rows]
    assert [r["true_labels"] for r in written] == test.labels and [
        r["scored"] for r in written
    ] == test.scored


def test_per_residue_rows_give_probabilities_that_sum_to_one(secondary_structure, tmp_path):
    out, _, _ = secondary_structure
    fasta = tmp_path / "two.fasta"
    fasta.write_text(">a\nMKTAYIAKQRQISFVKSHFSRQ\n>b\nMKV\n")
    argv = ["predict", str(out), str(fasta), "--out", str(tmp_path / "r.csv"), "--per-residue", "rows"]
    assert main(argv) == 0
    rows = _read_csv(tmp_path / "r.csv")
    assert list(rows[0]) == ["id", "position", "residue", "label", "p_H", "p_E", "p_C"]
    assert [(r["id"], int(r["position"]), r["residue"]) for r in rows] == [
        *(("a", i + 1, c) for i, c in enumerate("MKTAYIAKQRQISFVKSHFSRQ")),
        *(("b", i + 1, c) for i, c in enumerate("MKV")),
    ]
    for row in rows:
        probabilities = {c: float(row[f"p_{c}"]) for c in "HEC"}
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        assert row["label"] == max(probabilities, key=probabilities.get)
    predictions = predict_proteins(out, [("a", "MKTAYIAKQRQISFVKSHFSRQ")])
    (protein,) = predictions.proteins
    torch.testing.assert_close(protein.probabilities.sum(-1), torch.ones(22))
    assert protein.confidence == pytest.approx(float(protein.probabilities.max(-1).values.mean()))


def test_results_baseline_is_the_training_majority_class_on_the_test_residues(secondary_structure):
    out, splits, _ = secondary_structure
    train, test = splits["train"], splits["test"]
    counts = {c: 0 for c in "HEC"}
    for labels, scored in zip(train.labels, train.scored, strict=True):
        for label, keep in zip(labels, scored, strict=True):
            counts[label] += keep == "1"
    majority = max(counts, key=counts.get)
    hits = [t == majority for labels, scored in zip(test.labels, test.scored, strict=True)
            for t, s in zip(labels, scored, strict=True) if s == "1"]  # fmt: skip
    metric = read_results(out / "results.json")["metrics"]["q3"]
    assert metric["baseline"] == pytest.approx(sum(hits) / len(hits)) and majority in metric["baseline_name"]
    assert metric["higher_is_better"] is True


def test_validation_is_logged_as_q3(secondary_structure):
    out, _, result = secondary_structure
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r for r in records if "valid_q3" in r]
    assert [r["step"] for r in evaluated] == [2, 4] and not any("valid_accuracy" in r for r in records)
    assert {"valid_loss", "valid_residues"} <= set(evaluated[0])
    assert set(result["valid"]) == {"q3", "loss", "residues"}


def test_regression_writes_spearman_and_mse_beside_the_training_mean(tmp_path):
    splits = _splits("regression", train=16, valid=4, test=8)
    result = finetune(_encoder(), _training(2), **splits, out_dir=tmp_path, log=lambda _: None)
    train, test = splits["train"], splits["test"]
    rows = _read_csv(tmp_path / "test_predictions.csv")
    assert list(rows[0]) == ["id", "length", "predicted_length", "prediction", "target"]
    predicted = [float(r["prediction"]) for r in rows]
    mean = sum(train.targets) / len(train.targets)
    metrics = read_results(tmp_path / "results.json")["metrics"]
    mse = sum((p - t) ** 2 for p, t in zip(predicted, test.targets, strict=True)) / len(predicted)
    assert metrics["mse"]["value"] == pytest.approx(mse) and metrics["mse"]["higher_is_better"] is False
    baseline = sum((mean - t) ** 2 for t in test.targets) / len(test.targets)
    assert metrics["mse"]["baseline"] == pytest.approx(baseline)
    assert metrics["spearman"]["baseline"] is None and "constant" in metrics["spearman"]["baseline_name"]

    def ranks(values):
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        for rank, index in enumerate(order):
            out[index] = float(rank)
        return out

    a, b = ranks(predicted), ranks(test.targets)  # no ties: the test targets are distinct floats
    assert len(set(test.targets)) == len(test.targets) and len(set(predicted)) == len(predicted)
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    rho = cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))
    assert metrics["spearman"]["value"] == pytest.approx(rho) == pytest.approx(result["test"]["spearman"])
    loaded = load_protein_model(tmp_path)
    assert loaded.kind == "sequence_regressor"
    again = predict_proteins(loaded, list(zip(test.ids, test.sequences, strict=True)))
    assert [p.value for p in again.proteins] == pytest.approx(predicted, abs=1e-5)


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    splits = _splits("secondary_structure", train=8, valid=2, test=2)
    quiet = {"log": lambda _: None}
    finetune(_encoder(), _training(6, checkpoint_every=2), **splits, out_dir=tmp_path / "whole", **quiet)
    finetune(_encoder(), _training(4, checkpoint_every=2), **splits, out_dir=tmp_path / "parts", **quiet)
    finetune(
        _encoder(),
        _training(6, checkpoint_every=2),
        **splits,
        out_dir=tmp_path / "parts",
        resume=True,
        **quiet,
    )
    whole = load_protein_model(tmp_path / "whole").model.state_dict()
    parts = load_protein_model(tmp_path / "parts").model.state_dict()
    assert whole.keys() == parts.keys()
    for name in whole:
        assert torch.equal(whole[name], parts[name]), name
    assert json.loads((tmp_path / "parts" / "final" / "config.json").read_text())["steps"] == 6


def test_learned_positions_crop_and_say_so(tmp_path):
    splits = _splits("secondary_structure", train=8, valid=2, test=2)
    encoder = _encoder(position="learned", max_length=32)
    result = finetune(encoder, _training(1, max_length=32), **splits, out_dir=tmp_path, log=lambda _: None)
    predictions = predict_proteins(tmp_path, [("long", "MKV" * 20), ("short", "MKV")])
    assert predictions.cropped == 1 and predictions.keep == 30
    long, short = predictions.proteins
    assert (long.length, long.predicted_length, len(long.labels)) == (60, 30, 30)
    assert (short.length, short.predicted_length) == (3, 3)
    rows = predictions.rows()
    assert rows[0]["length"] == 60 and rows[0]["predicted_length"] == 30 and len(rows[0]["labels"]) == 30
    assert all(p.predicted_length <= 30 for p in result["predictions"].proteins)
    cropped = predict_proteins(tmp_path, [("long", "MKV" * 20)], max_length=10)
    assert cropped.proteins[0].predicted_length == 8


def test_language_model_commands_refuse_a_finetuned_model_and_embed_reads_its_encoder(
    secondary_structure, tmp_path, cli_error
):
    out, _, _ = secondary_structure
    fasta = tmp_path / "p.fasta"
    fasta.write_text(">a\nMKTAYIAKQR\n>b\nMKV\n")
    refusal = r"final: a fine-tuned per-residue classifier \(classes H/E/C\), not a language model"
    cli_error(["score", str(out), str(fasta), "--out", str(tmp_path / "s.csv")], match=refusal)
    cli_error(["evaluate", str(out), "--data", str(fasta)], match=refusal)
    cli_error(["generate", str(out), "MKV"], match=refusal)
    with pytest.raises(NotALanguageModelError, match="performers predict runs it"):
        load_trained(out)
    assert main(["embed", str(out), str(fasta), "--out", str(tmp_path / "e.npz")]) == 0
    import numpy as np

    embedded = np.load(tmp_path / "e.npz")
    encoder = load_protein_model(out).model.encoder
    ids, mask = ProteinTokenizer().batch_encode(["MKTAYIAKQR"])
    with torch.no_grad():
        hidden = encoder.eval()(ids, mask).last_hidden_state[0, 1:-1].mean(0)
    torch.testing.assert_close(torch.from_numpy(embedded["a"]), hidden, rtol=1e-5, atol=1e-6)


def test_predict_refuses_what_it_cannot_run(secondary_structure, tmp_path, cli_error):
    out, _, _ = secondary_structure
    fasta = tmp_path / "p.fasta"
    fasta.write_text(">a\nMKV\n")
    lm = tmp_path / "lm"
    from performers import PerformerForMaskedLM

    PerformerForMaskedLM(_encoder().config).save_pretrained(lm)
    ProteinTokenizer().save(lm / "tokenizer.json")
    cli_error(
        ["predict", str(lm), str(fasta), "--out", str(tmp_path / "p.csv")], match="not a fine-tuned one"
    )
    with pytest.raises(NotAFinetunedModelError, match="not a fine-tuned model"):
        predict_proteins(lm, [("a", "MKV")])
    bad = tmp_path / "bad.fasta"
    bad.write_text(">a\nMKJV\n")  # J is no residue
    cli_error(["predict", str(out), str(bad), "--out", str(tmp_path / "p.csv")], match="bad.fasta")
    missing = tmp_path / "no" / "such" / "p.csv"
    cli_error(["predict", str(out), str(fasta), "--out", str(missing)], match="no such directory")
    cli_error(["predict", str(tmp_path / "nothing"), str(fasta), "--out", str(tmp_path / "p.csv")],
              match="no such model directory")  # fmt: skip
    cli_error(["predict", str(out), str(fasta), "--out", str(tmp_path / "p.csv"), "--max-length", "2"],
              match="--max-length")  # fmt: skip
