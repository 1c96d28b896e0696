"""The experiments, above the generic training loop: the protein main job and its demo, the
paper's protein tables (Table 2, long context, backward compatibility), fine-tuning on labelled
proteins (per-residue classes, sequence-level regression), embeddings and likelihood scores of
trained models (zero-shot variant effects), and the diagnosis of FAVOR's error on a model's own
attention (:func:`diagnose_model`), and the paper's wider evidence — the kernel sweep, the
efficient-attention baselines, pixel prediction and the character-level text model
(:mod:`performers.experiments.paper_benchmarks`). Each is a documented function the CLI calls."""

from performers.experiments.attention_sweep import SweepRun, compare_attention, train_run
from performers.experiments.diagnose import DiagnoseError, DiagnosisReport, diagnose, diagnose_model
from performers.experiments.diagnose_report import write_report as write_diagnosis
from performers.experiments.embedding import embed_proteins, write_embeddings
from performers.experiments.finetuning import SequenceRegressor, TokenClassifier, evaluate_labelled, finetune
from performers.experiments.paper_benchmarks import baselines, kernel_sweep, pixel_prediction, text_model
from performers.experiments.paper_tasks import ModelSize, TaskSpec
from performers.experiments.protein_benchmarks import backward_compatibility, long_context, table2
from performers.experiments.protein_evaluation import (
    corpus_split,
    corpus_splits,
    evaluate_model,
    evaluate_per_sequence,
    protein_evaluator,
)
from performers.experiments.proteins import (
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
from performers.experiments.scoring import (
    Mutation,
    find_mutations,
    format_mutations,
    parse_mutations,
    score_proteins,
    variant_effects,
)
from performers.utils import write_csv

__all__ = [
    "DEMO_MODEL",
    "DEMO_VARIANTS",
    "TABLE2_VARIANTS",
    "DiagnoseError",
    "DiagnosisReport",
    "ModelSize",
    "Mutation",
    "RunResult",
    "SequenceRegressor",
    "SweepRun",
    "TaskSpec",
    "TokenClassifier",
    "Variant",
    "backward_compatibility",
    "baselines",
    "compare",
    "compare_attention",
    "corpus_split",
    "corpus_splits",
    "diagnose",
    "diagnose_model",
    "embed_proteins",
    "evaluate_labelled",
    "evaluate_model",
    "evaluate_per_sequence",
    "find_mutations",
    "finetune",
    "format_mutations",
    "kernel_sweep",
    "load_trained",
    "long_context",
    "parse_mutations",
    "pixel_prediction",
    "protein_evaluator",
    "protein_model_config",
    "run_training",
    "score_proteins",
    "table2",
    "text_model",
    "train_run",
    "train_variants",
    "unigram_baseline",
    "variant_effects",
    "write_csv",
    "write_diagnosis",
    "write_embeddings",
]
