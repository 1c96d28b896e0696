"""Protein data, and nothing else: FASTA reading, the amino-acid tokenizer, datasets (crops,
concatenated windows), collation for masked and causal language modelling, the shipped corpus
and the FLIP secondary-structure split. It imports no model and no training code."""

from performers.proteins.data import (
    CausalLMCollator,
    ConcatenatedWindows,
    LanguageModelExamples,
    MaskedLMCollator,
    ProteinSequences,
    UnigramBaseline,
    default_corpus,
    evaluation_batches,
    read_split,
)
from performers.proteins.fasta import FastaError, FastaRecord, read_fasta
from performers.proteins.secondary_structure import LABELS, SecondaryStructureData, SecondaryStructureExamples
from performers.proteins.tokenizer import ProteinTokenizer

__all__ = [
    "LABELS",
    "CausalLMCollator",
    "ConcatenatedWindows",
    "FastaError",
    "FastaRecord",
    "LanguageModelExamples",
    "MaskedLMCollator",
    "ProteinSequences",
    "ProteinTokenizer",
    "SecondaryStructureData",
    "SecondaryStructureExamples",
    "UnigramBaseline",
    "default_corpus",
    "evaluation_batches",
    "read_fasta",
    "read_split",
]
