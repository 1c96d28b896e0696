"""The experiments, above the generic training loop: the protein main job and its demo, the
paper's protein tables (Table 2, long context, backward compatibility) and secondary-structure
fine-tuning. Each is a documented function the CLI calls."""

from performers.experiments.protein_benchmarks import backward_compatibility, long_context, table2
from performers.experiments.proteins import (
    DEMO_MODEL,
    DEMO_VARIANTS,
    TABLE2_VARIANTS,
    RunResult,
    Variant,
    compare,
    evaluate_model,
    load_trained,
    protein_model_config,
    run_training,
    train_variants,
    unigram_baseline,
)
from performers.experiments.secondary_structure import SecondaryStructureModel, evaluate_q3, finetune

__all__ = [
    "DEMO_MODEL",
    "DEMO_VARIANTS",
    "TABLE2_VARIANTS",
    "RunResult",
    "SecondaryStructureModel",
    "Variant",
    "backward_compatibility",
    "compare",
    "evaluate_model",
    "evaluate_q3",
    "finetune",
    "load_trained",
    "long_context",
    "protein_model_config",
    "run_training",
    "table2",
    "train_variants",
    "unigram_baseline",
]
