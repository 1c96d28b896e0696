import torch

from performers.proteins import ProteinTokenizer
from performers.proteins.secondary_structure import LABELS, SecondaryStructureData, q3_accuracy


def test_labels_align_with_residues_and_unresolved_are_not_scored():
    data = SecondaryStructureData(["MKVA"], ["HECH"], ["1101"])
    _, attention, labels = data.batch([0], ProteinTokenizer(), max_length=16)
    # <cls> M K V A <eos>: labels on M, K and A; V is unresolved; specials never scored.
    assert labels[0].tolist() == [-100, LABELS.index("H"), LABELS.index("E"), -100, LABELS.index("H"), -100]
    assert attention[0].sum() == 6
    logits = torch.zeros(1, 6, 3)
    logits[0, 1, 0] = logits[0, 2, 0] = logits[0, 4, 0] = 1.0  # predicts H at the scored positions
    assert q3_accuracy(logits, labels) == (2, 3)


def test_loads_the_shipped_flip_split():
    test = SecondaryStructureData.load("test")
    assert len(test.sequences) == 364  # as stated in data/proteins/SOURCE.md
    assert all(
        len(s) == len(label) == len(m)
        for s, label, m in zip(test.sequences, test.labels, test.resolved, strict=True)
    )
