"""Protein data, and nothing else: FASTA reading, the amino-acid tokenizer, datasets (crops,
concatenated windows), prepared (memory-mapped) datasets made from FASTA at corpus scale,
collation for masked and causal language modelling, the shipped corpus, labelled data in FLIP's
conventions (per-residue classes, sequence-level targets) and the FLIP tasks shipped with the
package. It imports no model and no training code."""

from performers.proteins.data import (
    CausalLMCollator,
    ConcatenatedWindows,
    LanguageModelExamples,
    MaskedLMCollator,
    ProteinSequences,
    UnigramBaseline,
    default_corpus,
    evaluation_batches,
    first_records,
    read_split,
)
from performers.proteins.fasta import FastaError, FastaRecord, read_fasta
from performers.proteins.identity import training_data_identity
from performers.proteins.labelled import (
    SHIPPED_TASKS,
    LabelledExamples,
    ResidueLabels,
    SequenceTargets,
    load_shipped_task,
)
from performers.proteins.prepared import prepare
from performers.proteins.prepared_dataset import (
    PreparedDataset,
    PreparedDatasetError,
    is_prepared,
    read_manifest,
    verify_prepared,
)
from performers.proteins.tokenizer import ProteinTokenizer, UnknownResidueError

__all__ = [
    "SHIPPED_TASKS",
    "CausalLMCollator",
    "ConcatenatedWindows",
    "FastaError",
    "FastaRecord",
    "LabelledExamples",
    "LanguageModelExamples",
    "MaskedLMCollator",
    "PreparedDataset",
    "PreparedDatasetError",
    "ProteinSequences",
    "ProteinTokenizer",
    "ResidueLabels",
    "SequenceTargets",
    "UnigramBaseline",
    "UnknownResidueError",
    "default_corpus",
    "evaluation_batches",
    "first_records",
    "is_prepared",
    "load_shipped_task",
    "prepare",
    "read_fasta",
    "read_manifest",
    "read_split",
    "training_data_identity",
    "verify_prepared",
]
