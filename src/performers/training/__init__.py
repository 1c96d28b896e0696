"""Plain-PyTorch training that knows no proteins: the loop (:class:`Trainer`) over any
:class:`ExampleSource`, one optimizer, one learning-rate schedule, token-level evaluation, and
atomic checkpoints with exact resume (shared by fine-tuning and distillation)."""

from performers.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    restore,
    save_checkpoint,
)
from performers.training.data import ExampleSource, RandomStreams
from performers.training.evaluation import (
    evaluate_regression,
    evaluate_tokens,
    evaluation_mode,
    logits_of,
    masked_accuracy,
)
from performers.training.metrics import ranks, spearman
from performers.training.optim import build_optimizer
from performers.training.schedule import SCHEDULES, lr_factor, make_scheduler
from performers.training.trainer import TASKS, Trainer, TrainingConfig

__all__ = [
    "SCHEDULES",
    "TASKS",
    "Checkpoint",
    "CheckpointError",
    "ExampleSource",
    "RandomStreams",
    "Trainer",
    "TrainingConfig",
    "build_optimizer",
    "evaluate_regression",
    "evaluate_tokens",
    "evaluation_mode",
    "latest_checkpoint",
    "load_checkpoint",
    "logits_of",
    "lr_factor",
    "make_scheduler",
    "masked_accuracy",
    "ranks",
    "restore",
    "save_checkpoint",
    "spearman",
]
