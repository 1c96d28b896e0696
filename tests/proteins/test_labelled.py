"""Labelled protein data in FLIP's conventions: per-residue classes and sequence-level targets."""

import gzip

import pytest
import torch

from performers.proteins import (
    LabelledExamples,
    ProteinTokenizer,
    ResidueLabels,
    SequenceTargets,
    load_shipped_task,
)
from performers.training import masked_accuracy

TOK = ProteinTokenizer()


def _write(path, records):
    path.write_text("".join(f">{header}\n{body}\n" for header, body in records))
    return path


def test_labels_align_with_residues_and_unscored_residues_are_ignored(tmp_path):
    sequences = _write(tmp_path / "s.fasta", [("p1", "MKVA"), ("p2", "AC")])
    labels = _write(tmp_path / "l.fasta", [("p1 SET=train VALIDATION=False", "HECH"), ("p2 SET=test", "CC")])
    mask = _write(tmp_path / "m.fasta", [("p1", "1101"), ("p2", "11")])
    data = ResidueLabels.load(sequences, labels, mask=mask, classes="HEC", split="train")
    assert data.ids == ["p1"] and data.kind == "tokens"
    batch = data.batch([0], TOK, max_length=16)
    # <cls> M K V A <eos>: labels on M, K and A; V is unscored; specials never scored.
    assert batch["labels"][0].tolist() == [-100, 0, 1, -100, 0, -100]
    assert batch["attention_mask"][0].sum() == 6
    logits = torch.zeros(1, 6, 3)
    logits[0, 1, 0] = logits[0, 2, 0] = logits[0, 4, 0] = 1.0  # predicts H at the scored positions
    assert masked_accuracy(logits, batch["labels"], causal=False)[:2] == (2, 3)  # Q3: 2 of 3
    # Classes default to the label file's characters, sorted; no mask: every residue counts.
    assert ResidueLabels.load(sequences, labels, split="test").classes == "CEH"


def test_labelled_errors_name_the_record(tmp_path):
    sequences = _write(tmp_path / "s.fasta", [("p1", "MKVA")])
    labels = _write(tmp_path / "l.fasta", [("p1 SET=train", "HEC"), ("p9 SET=train", "H")])
    with pytest.raises(ValueError, match=r"'p1' has sequence, labels and mask of different lengths"):
        ResidueLabels.load(sequences, labels, split="train", limit=1)
    _write(labels, [("p9 SET=train", "H")])
    with pytest.raises(ValueError, match=r"record 'p9' has no sequence"):
        ResidueLabels.load(sequences, labels, split="train")
    _write(labels, [("p1 SET=train", "HEXH")])
    with pytest.raises(ValueError, match=r"illegal character 'X'.*column 3"):
        ResidueLabels.load(sequences, labels, split="train", classes="HEC")
    targets = _write(
        tmp_path / "t.fasta", [("v1 TARGET=0.5 SET=train", "MKV"), ("v2 TARGET=abc SET=train", "MKV")]
    )
    with pytest.raises(ValueError, match=r"'v2' needs TARGET=<finite number>, got 'abc'"):
        SequenceTargets.load(targets, split="train")


def test_sequence_targets_batches_and_examples(tmp_path):
    path = tmp_path / "t.fasta.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(
            ">a TARGET=1.5 SET=train\nMKVAC\n>b TARGET=-2 SET=train\nMK\n>c TARGET=3 SET=test\nAAA\n"
        )
    data = SequenceTargets.load(path, split="train")
    assert data.targets == [1.5, -2.0] and data.kind == "regression"
    examples = LabelledExamples(data, TOK, max_length=16)
    batch = examples.collate([examples.example(0), examples.example(1)])
    assert batch["input_ids"].shape == (2, 7) and batch["targets"].tolist() == [1.5, -2.0]
    assert batch["attention_mask"].sum(1).tolist() == [7, 4]
    assert [b["targets"].tolist() for b in examples.batches(1)] == [[1.5], [-2.0]]


def test_the_shipped_flip_tasks():
    test = load_shipped_task("secondary_structure", "test")
    assert len(test) == 364 and test.classes == "HEC"  # as stated in performers/data/proteins/SOURCE.md
    assert all(
        len(s) == len(label) == len(m)
        for s, label, m in zip(test.sequences, test.labels, test.scored, strict=True)
    )
    conservation = load_shipped_task("conservation", "valid")
    assert len(conservation) == 555 and conservation.classes == "123456789"
    gb1 = load_shipped_task("gb1", "test")
    assert len(gb1) == 1745 and all(len(s) == 265 for s in gb1.sequences)
    with pytest.raises(ValueError, match="task must be one of"):
        load_shipped_task("stability", "train")
