"""The user's jobs, above the generic training loop: the protein main job and its demo,
fine-tuning on labelled proteins (per-residue classes, sequence-level regression), embeddings
and likelihood scores of trained models (zero-shot variant effects: mutant lists, saturation
scans and their heatmap), predictions of fine-tuned models (:func:`predict_proteins`), one
loader for protein model
directories (this package's or Hugging Face's: :func:`load_protein_model`, and
:func:`protein_lm_from_directory` for embedding and scoring), and the diagnosis of
FAVOR's error on a model's own attention (:func:`diagnose_model`). Each is a documented function
the CLI calls. The measurements of ``performers bench`` (the paper's tables and wider evidence)
live in :mod:`performers.bench`."""

from performers.jobs.cropping import CropReport
from performers.jobs.diagnose import DiagnoseError, DiagnosisReport, diagnose, diagnose_model
from performers.jobs.diagnose_report import write_report as write_diagnosis
from performers.jobs.embedding import embed_proteins, extract_representations, write_embeddings
from performers.jobs.finetuning import SequenceRegressor, TokenClassifier, evaluate_labelled, finetune
from performers.jobs.heatmap import plot_saturation
from performers.jobs.hf_protein_lm import HuggingFaceProteinLM, protein_lm_from_directory
from performers.jobs.prediction import Predictions, ProteinPrediction, predict_proteins, write_predictions
from performers.jobs.protein_evaluation import (
    ProteinEvaluation,
    corpus_split,
    corpus_splits,
    evaluate_model,
    evaluate_per_sequence,
    evaluate_proteins,
    protein_evaluator,
)
from performers.jobs.protein_lm import PerformerProteinLM, ProteinLM, ProteinVocabulary, as_protein_lm
from performers.jobs.protein_models import NotAProteinModelError, ProteinModel, load_protein_model
from performers.jobs.proteins import (
    DEMO_MODEL,
    DEMO_VARIANTS,
    TABLE2_VARIANTS,
    RunResult,
    Variant,
    compare,
    load_trained,
    protein_model_config,
    run_training,
    train_variants,
    unigram_baseline,
)
from performers.jobs.pseudo_likelihood import pseudo_log_likelihoods
from performers.jobs.scoring import (
    Mutation,
    MutationError,
    apply_mutations,
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
from performers.jobs.variant_scan import (
    SaturationScan,
    blosum62_scores,
    parse_mutants,
    saturation_scan,
    score_mutation_list,
)
from performers.utils import write_csv

__all__ = [
    "DEMO_MODEL",
    "DEMO_VARIANTS",
    "TABLE2_VARIANTS",
    "CropReport",
    "DiagnoseError",
    "DiagnosisReport",
    "HuggingFaceProteinLM",
    "Mutation",
    "MutationError",
    "NotAProteinModelError",
    "PerformerProteinLM",
    "Predictions",
    "ProteinEvaluation",
    "ProteinLM",
    "ProteinModel",
    "ProteinPrediction",
    "ProteinVocabulary",
    "RunResult",
    "SaturationScan",
    "SequenceRegressor",
    "TokenClassifier",
    "Variant",
    "apply_mutations",
    "as_protein_lm",
    "blosum62_scores",
    "compare",
    "corpus_split",
    "corpus_splits",
    "diagnose",
    "diagnose_model",
    "embed_proteins",
    "evaluate_labelled",
    "evaluate_model",
    "evaluate_per_sequence",
    "evaluate_proteins",
    "extract_representations",
    "find_mutations",
    "finetune",
    "format_mutations",
    "load_protein_model",
    "load_trained",
    "parse_mutants",
    "parse_mutations",
    "plot_saturation",
    "predict_proteins",
    "protein_evaluator",
    "protein_lm_from_directory",
    "protein_model_config",
    "pseudo_log_likelihoods",
    "read_dms",
    "run_training",
    "saturation_scan",
    "score_dms",
    "score_mutants",
    "score_mutation_list",
    "score_proteins",
    "train_variants",
    "unigram_baseline",
    "variant_effects",
    "write_csv",
    "write_diagnosis",
    "write_dms_scores",
    "write_embeddings",
    "write_predictions",
]
