"""Plain-PyTorch training that knows no proteins: the loop (:class:`Trainer`) over any
:class:`ExampleSource`, one optimizer, one learning-rate schedule, token-level evaluation, and
atomic checkpoints with exact resume (shared by fine-tuning and distillation): a run directory
belongs to one run at a time, a resume refuses options that would change the computation, and a
stop signal (SIGTERM, SIGINT, SIGUSR1) ends a run cleanly with a checkpoint (:class:`Preempted`).
In a ``torch.distributed`` job, what rank 0 does alone (the lock, metrics, checkpoints) fails in
every process alike (:func:`collectively`)."""

from performers.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    NoUsableCheckpointError,
    checkpoint_period,
    latest_checkpoint,
    load_checkpoint,
    restore,
    save_checkpoint,
)
from performers.training.collective import RankFailedError, collectively
from performers.training.data import ExampleSource, PackedCollate, RandomStreams
from performers.training.devices import (
    model_device,
    once_per_job,
    process_group,
    resolve_device,
    to_device,
)
from performers.training.evaluation import (
    evaluate_regression,
    evaluate_tokens,
    evaluation_mode,
    logits_of,
    masked_accuracy,
)
from performers.training.metrics import ranks, spearman
from performers.training.optim import build_optimizer
from performers.training.run_config import (
    SAFE_ON_RESUME,
    Change,
    ResumeMismatchError,
    check_resume,
    describe_run,
    format_changes,
    recorded_run,
)
from performers.training.run_directory import RunDirectoryError, owned, start_fresh
from performers.training.schedule import SCHEDULES, lr_factor, make_scheduler
from performers.training.signals import EXIT_STATUS, Preempted, PreemptionRequest, preemption_signals
from performers.training.trainer import TASKS, Trainer, TrainingConfig

__all__ = [
    "EXIT_STATUS",
    "SAFE_ON_RESUME",
    "SCHEDULES",
    "TASKS",
    "Change",
    "Checkpoint",
    "CheckpointError",
    "ExampleSource",
    "NoUsableCheckpointError",
    "PackedCollate",
    "Preempted",
    "PreemptionRequest",
    "RandomStreams",
    "RankFailedError",
    "ResumeMismatchError",
    "RunDirectoryError",
    "Trainer",
    "TrainingConfig",
    "build_optimizer",
    "check_resume",
    "checkpoint_period",
    "collectively",
    "describe_run",
    "evaluate_regression",
    "evaluate_tokens",
    "evaluation_mode",
    "format_changes",
    "latest_checkpoint",
    "load_checkpoint",
    "logits_of",
    "lr_factor",
    "make_scheduler",
    "masked_accuracy",
    "model_device",
    "once_per_job",
    "owned",
    "preemption_signals",
    "process_group",
    "ranks",
    "recorded_run",
    "resolve_device",
    "restore",
    "save_checkpoint",
    "spearman",
    "start_fresh",
    "to_device",
]
