import torch

from performers.proteins import ProteinTokenizer
from performers.proteins.secondary_structure import LABELS, SecondaryStructureData, SecondaryStructureExamples
from performers.training import masked_accuracy


def test_labels_align_with_residues_and_unresolved_are_not_scored():
    data = SecondaryStructureData(["MKVA"], ["HECH"], ["1101"])
    _, attention, labels = data.batch([0], ProteinTokenizer(), max_length=16)
    # <cls> M K V A <eos>: labels on M, K and A; V is unresolved; specials never scored.
    assert labels[0].tolist() == [-100, LABELS.index("H"), LABELS.index("E"), -100, LABELS.index("H"), -100]
    assert attention[0].sum() == 6
    logits = torch.zeros(1, 6, 3)
    logits[0, 1, 0] = logits[0, 2, 0] = logits[0, 4, 0] = 1.0  # predicts H at the scored positions
    assert masked_accuracy(logits, labels, causal=False)[:2] == (2, 3)  # Q3: 2 of 3 scored residues


def test_loads_the_shipped_flip_split():
    test = SecondaryStructureData.load("test")
    assert len(test.sequences) == 364  # as stated in performers/data/proteins/SOURCE.md
    assert all(
        len(s) == len(label) == len(m)
        for s, label, m in zip(test.sequences, test.labels, test.resolved, strict=True)
    )


def test_examples_and_batches_cover_every_protein_in_order():
    data = SecondaryStructureData(["MKVA", "AC", "HEHEH"], ["HECH", "CC", "HHEEC"], ["1101", "11", "11111"])
    examples = SecondaryStructureExamples(data, ProteinTokenizer(), max_length=16)
    assert len(examples) == 3
    first = examples.example(0, None)
    assert first["labels"].shape == (1, 6)
    batches = list(examples.batches(2))
    assert [b["input_ids"].shape[0] for b in batches] == [2, 1]
    torch.testing.assert_close(examples.collate([first])["labels"], first["labels"])
