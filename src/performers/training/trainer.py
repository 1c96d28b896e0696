"""The training loop: plain PyTorch, one class a reader can follow top to bottom.

Token-level objectives — masked language modelling (``task="mlm"``, the paper's BID), causal
language modelling (``"clm"``, UNI: labels shifted by one) and per-token classification
(``"tokens"``, e.g. secondary structure) — on any :class:`~performers.training.data.ExampleSource`,
with AdamW (:func:`~performers.training.optim.build_optimizer`), linear warm-up then cosine or
constant learning rate (:func:`~performers.training.schedule.lr_factor`), gradient clipping and
accumulation, optional bf16 autocast, feature redraws, periodic evaluation, JSONL metrics,
TensorBoard scalars and atomic checkpoints. Resuming from a checkpoint continues *exactly*:
model, optimizer, scheduler, global RNG and the data position are restored, and the crops and
masks of every example are pure functions of ``(seed, epoch, slot)``, so a resumed run ends with
the same parameters, bit for bit, as an uninterrupted one (CPU). A resume refuses options that
would continue another computation (:mod:`performers.training.run_config`), and the output
directory belongs to one run at a time (:mod:`performers.training.run_directory`). Under
``torchrun`` every process takes its share of each global batch (DistributedDataParallel); with
``context_parallel = N`` the processes form a ``data × context`` DeviceMesh and the ``N``
processes of a context group split each sequence of their share into contiguous shards (FAVOR
attention exchanges ``O(M·D)`` summaries per layer, :mod:`performers.distributed`).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from performers.distributed import shard_of
from performers.layers import FeatureRedrawer, MultiheadAttentionBase
from performers.ops import flush_underflow_warnings
from performers.training.checkpoint import (
    NoUsableCheckpointError,
    latest_checkpoint,
    restore,
    save_checkpoint,
)
from performers.training.collective import collectively
from performers.training.data import ExampleSource, PackedCollate
from performers.training.devices import model_device, to_device
from performers.training.evaluation import logits_of
from performers.training.loader import batch_loader, next_batch_start
from performers.training.optim import build_optimizer
from performers.training.run_config import check_resume, describe_run, format_changes, recorded_run
from performers.training.run_directory import keep_metrics_through, owned, start_fresh
from performers.training.schedule import SCHEDULES, make_scheduler
from performers.training.signals import Preempted, PreemptionRequest, preemption_signals
from performers.utils import IGNORE_INDEX, append_line

__all__ = ["TASKS", "Trainer", "TrainingConfig"]

# Objectives: token-level ("clm": the label of position t is at t + 1, the next token), or one
# real-valued target per sequence ("regression": the model returns (B,) predictions).
TASKS = ("mlm", "clm", "tokens", "regression")


def _no_buffer_broadcast_in_forward() -> dict[str, bool]:
    """DDP's option for "no buffer broadcast in each forward": ``forward_sync_buffers=False`` where
    this torch has it (its older spelling, ``broadcast_buffers``, warns there), else
    ``broadcast_buffers=False``."""
    parameters = inspect.signature(DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def _signal_of(request: PreemptionRequest | None) -> int:
    """This process's vote on stopping after the step: the stop signal it received (0: none)."""
    return 0 if request is None else request.signum or 0


@dataclass
class TrainingConfig:
    """Options of one training run (all JSON-serializable, recorded in every checkpoint).

    The loop itself reads the optimization fields; ``max_length``, ``mask_prob`` and
    ``concatenate`` describe the examples and are read by whoever builds the data set.
    """

    task: str = "mlm"
    max_steps: int = 200
    batch_size: int = 8
    max_length: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 20
    schedule: str = "cosine"
    grad_clip: float = 0.5
    accumulation: int = 1
    eval_every: int = 50
    eval_batches: int = 10
    checkpoint_every: int = 50
    keep_last: int = 3
    bf16: bool = False
    mask_prob: float = 0.15
    seed: int = 0
    log_every: int = 10
    # False: one sequence per example, randomly cropped to max_length. True: the sequences
    # joined with separators and cut into windows of exactly max_length tokens (the paper's
    # concatenated long-sequence setting, e.g. max_length = 8192).
    concatenate: bool = False
    # True: each step's batch_size examples (the same examples as unpacked) are laid end to end
    # in one row, no example attending to another, instead of each padded to the longest;
    # batch_size still counts examples (the row's length varies), so packed and unpacked runs
    # see the same examples and the same loss per real token.
    pack: bool = False
    # TensorBoard event files in out_dir/tensorboard: True, False, or None = when installed.
    tensorboard: bool | None = None
    # Loader processes that build the next batches while the model trains (0: none, the
    # training process builds them). The batches are the same either way.
    num_workers: int = 0
    # Processes that split each sequence into contiguous shards (context parallelism, FAVOR
    # attention only); the process count must be a multiple of it (the rest is data parallel).
    context_parallel: int = 1
    # What the examples are, as JSON values (e.g. {"train_sha256": ..., "train_limit": 500}
    # for a prepared dataset): not read by the loop; recorded in checkpoints and compared on
    # resume, so a run is never continued on other data.
    data_identity: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.context_parallel > 1 and self.task == "regression":
            raise ValueError(
                "context_parallel needs a token-level task: a sequence-level target reads every shard"
            )
        if self.pack and (self.task not in ("mlm", "clm") or self.concatenate or self.context_parallel > 1):
            raise ValueError(
                "pack needs a language-model task (mlm or clm) without concatenate (windows are "
                "full already) or context_parallel (which shards one sequence per row)"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for name in (
            "max_steps",
            "batch_size",
            "accumulation",
            "eval_every",
            "checkpoint_every",
            "context_parallel",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "num_workers", "learning_rate", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not isinstance(self.data_identity, dict):
            raise TypeError(f"data_identity must be a dict, got {type(self.data_identity).__name__}")

    @property
    def causal(self) -> bool:
        """Whether labels are the next tokens (shifted by one position)."""
        return self.task == "clm"


class Trainer:
    """Train ``model`` on the examples of ``data``.

    Args:
        model: a module whose ``model(input_ids, attention_mask)`` returns logits ``(B, L, V)``
            (or an object with ``.logits``), e.g. a Performer masked or causal LM; with
            ``config.pack``, ``model(input_ids, cu_seqlens=...)`` on one packed row (see
            :class:`~performers.training.data.PackedCollate`).
        data: the training set (:class:`~performers.training.data.ExampleSource`).
        config: :class:`TrainingConfig`.
        out_dir: checkpoints (``checkpoints/``), ``metrics.jsonl`` and ``tensorboard/`` go here.
        evaluate: ``evaluate(model) -> {"accuracy": ..., ...}``, run every ``eval_every`` steps
            and at the end (rank 0); its values are logged as ``valid_<name>``.
        log: where progress lines go.
    """

    def __init__(
        self,
        model: nn.Module,
        data: ExampleSource,
        config: TrainingConfig,
        out_dir: str | Path,
        *,
        evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.model, self.data, self.config, self.log = model, data, config, log
        # Batches are built on the CPU and moved to where the model is (model.to(device) first).
        self.device = model_device(model)
        self.evaluate = evaluate
        self.out_dir = Path(out_dir)
        # Multi-process (torchrun): every rank sees the same global batch order and takes its
        # share of each batch; projections agree without communication (seeded redraws).
        distributed = dist.is_available() and dist.is_initialized()
        self.world = dist.get_world_size() if distributed else 1
        self.rank = dist.get_rank() if distributed else 0
        # Context parallelism: consecutive ranks share one batch share and split its sequences.
        self.context_group = None
        context = config.context_parallel
        if self.world % context:
            raise ValueError(f"context_parallel {context} must divide the {self.world} processes of the job")
        self.data_world, self.data_rank = self.world // context, self.rank // context
        if context > 1:
            from torch.distributed.device_mesh import init_device_mesh

            exact = [
                m for m in model.modules() if isinstance(m, MultiheadAttentionBase) and m.attention != "favor"
            ]
            if exact:
                raise ValueError(
                    f"context_parallel needs FAVOR attention; the model has {exact[0].attention!r} attention"
                )

            mesh = init_device_mesh(
                self.device.type, (self.data_world, context), mesh_dim_names=("data", "context")
            )
            self.context_group = mesh.get_group("context")
        if config.batch_size % self.data_world:
            raise ValueError(
                f"batch_size {config.batch_size} (global) must be divisible by {self.data_world} "
                "data-parallel processes"
            )
        # One GPU per process: DDP's buckets live there (device_ids None on the CPU). Buffers (the
        # FAVOR projections and their redraw counters) are rank 0's once, at the start, and never
        # broadcast in a forward: every process redraws its own, from the same seed and step.
        device_ids = [self.device] if self.device.type == "cuda" else None
        self.train_model = (
            DistributedDataParallel(model, device_ids=device_ids, **_no_buffer_broadcast_in_forward())
            if self.world > 1
            else model
        )
        if len(data) < config.batch_size:
            raise ValueError(
                f"the training data gives {len(data)} examples (of at most {config.max_length} tokens), "
                f"fewer than one batch of {config.batch_size}"
            )
        self.optimizer = build_optimizer(
            model,
            learning_rate=config.learning_rate,
            weight_decay=config.weight_decay,
            betas=(0.9, 0.98),
            eps=1e-9,
        )
        self.scheduler = make_scheduler(
            self.optimizer,
            warmup_steps=config.warmup_steps,
            total_steps=config.max_steps,
            schedule=config.schedule,
        )
        # Every FAVOR layer inside the model (a Performer, an encoder under a task head, a converted
        # Hugging Face model) redraws on its own schedule (FavorConfig.redraw_every).
        self.redrawer = FeatureRedrawer(model)
        self.step = 0
        self.epoch = 0
        self.position = 0
        self._batches: Iterator[dict[str, Tensor]] | None = None  # from (epoch, position)
        self.tokens_seen = 0  # non-padding tokens trained on by this process
        self.train_seconds = 0.0  # time in training steps (no evaluation or checkpoint) here

    def _next_batch(self) -> dict[str, Tensor]:
        """This process's share of the next global batch, collated (from the loader)."""
        c = self.config
        if self._batches is None:
            self._batches = batch_loader(
                self.data,
                batch_size=c.batch_size,
                seed=c.seed,
                epoch=self.epoch,
                position=self.position,
                rank=self.data_rank,
                world=self.data_world,
                num_workers=c.num_workers,
                pack=self._packing(),
            )
        batch = next(self._batches)
        self.epoch, self.position = next_batch_start(self.epoch, self.position, c.batch_size, len(self.data))
        self.position += c.batch_size
        return batch

    def _packing(self) -> PackedCollate | None:
        """The collate of packed batches (``config.pack``), or None."""
        c = self.config
        if not c.pack:
            return None
        return PackedCollate(c.max_length, causal=c.causal)

    def _close_loader(self) -> None:
        self._batches = None  # stops the loader's worker processes

    def _loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, float]:
        """Loss to back-propagate, and the global mean loss (for logging).

        The summed loss of this process's share (token cross-entropy over labelled tokens, or
        squared error over sequences for ``"regression"``) is divided by the number of labelled
        tokens (sequences) in the *global* batch and multiplied by the process count, which
        DistributedDataParallel divides the summed gradients by: every process count gives the
        gradient of the same global mean. Under context parallelism each process scores its
        shard of the sequences, with causal labels shifted across shard boundaries first.
        """
        if self.context_group is not None:
            return self._context_parallel_loss(batch)
        if "cu_seqlens" in batch:  # packed rows (config.pack): the boundaries replace the mask
            output = logits_of(self.train_model(batch["input_ids"], cu_seqlens=batch["cu_seqlens"]))
        else:
            output = logits_of(self.train_model(batch["input_ids"], batch["attention_mask"]))
        if self.config.task == "regression":
            target = batch["targets"].to(torch.float32)
            total = (output.float().reshape(target.shape) - target).pow(2).sum()
            count = float(target.numel())
        else:
            labels = batch["labels"]
            if self.config.causal:
                output, labels = output[:, :-1], labels[:, 1:]
            total = nn.functional.cross_entropy(
                output.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
            )
            count = float((labels != IGNORE_INDEX).sum())
        return self._normalized(total, count)

    def _context_parallel_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, float]:
        labels = batch["labels"]
        if self.config.causal:
            # Position t predicts token t+1, which may sit on the next shard: shift, then cut.
            ignored = torch.full_like(labels[:, :1], IGNORE_INDEX)
            labels = torch.cat([labels[:, 1:], ignored], dim=1)
        group = self.context_group
        input_ids, attention_mask, labels = (
            shard_of(t, group) for t in (batch["input_ids"], batch["attention_mask"], labels)
        )
        output = logits_of(self.train_model(input_ids, attention_mask, context_group=group))
        total = nn.functional.cross_entropy(
            output.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        return self._normalized(total, float((labels != IGNORE_INDEX).sum()))

    def _normalized(self, total: Tensor, count: float) -> tuple[Tensor, float]:
        """``total`` (this process's summed loss) over the global count, times the process count;
        and the global mean loss."""
        # (On the model's device: NCCL reduces GPU tensors only.)
        stats = torch.tensor([count, total.item()], device=self.device)
        if self.world > 1:
            dist.all_reduce(stats)
        count = max(stats[0].item(), 1.0)
        return total * (self.world / count), stats[1].item() / count

    # What the loop's own state in a checkpoint must hold (checked with the rest of meta.json).
    STATE_SCHEMA: ClassVar[Mapping[str, type]] = MappingProxyType({"epoch": int, "position": int})

    def run_description(self) -> dict[str, Any]:
        """This run's configuration as checkpoints record it (:func:`describe_run`)."""
        return describe_run("training", self.config, self.model)

    def _checkpoint(self) -> None:
        save_checkpoint(
            self.out_dir / "checkpoints",
            step=self.step,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            state={"epoch": self.epoch, "position": self.position},
            run=self.run_description(),
            keep_last=self.config.keep_last,
            generators=self._device_generators(),
        )

    def _device_generators(self) -> dict[str, torch.Generator]:
        """The random generator of the model's GPU (its dropout masks), kept in checkpoints
        beside the CPU's so that a resumed run on the GPU draws the same masks."""
        if self.device.type != "cuda":
            return {}
        return {"cuda": torch.cuda.default_generators[self.device.index or 0]}

    def resume(self) -> bool:
        """Restore the newest usable checkpoint under ``out_dir``; False if there is none.

        Raises:
            ResumeMismatchError: the checkpoint's run has other options than this one (other
                than those of :data:`~performers.training.run_config.SAFE_ON_RESUME`), or its
                model other parameter shapes; every difference is listed.
            NoUsableCheckpointError: there are checkpoints, but every one is corrupt.
        """
        try:
            checkpoint = latest_checkpoint(
                self.out_dir / "checkpoints", state_schema=self.STATE_SCHEMA, raise_if_unusable=True
            )
        except NoUsableCheckpointError as error:
            raise NoUsableCheckpointError(
                f"{error}; nothing to resume: start afresh with --overwrite (overwrite=True), which "
                "moves them aside"
            ) from None
        if checkpoint is None:
            return False
        stored = recorded_run(checkpoint.path, checkpoint.run, checkpoint.state, "training")
        safe = check_resume(checkpoint.path, stored, self.run_description())
        restore(checkpoint, self.model, self.optimizer, self.scheduler)
        for name, generator in self._device_generators().items():
            if name in checkpoint.generators:  # (absent: the run was checkpointed on the CPU)
                generator.set_state(checkpoint.generators[name])
        self.step = checkpoint.step
        self.epoch, self.position = checkpoint.state["epoch"], checkpoint.state["position"]
        self._close_loader()  # batches restart from the restored position
        with collectively(self.device):  # (a failed rewrite stops every process)
            if self.rank == 0:  # metrics written after this checkpoint by the interrupted run are dropped
                keep_metrics_through(self.out_dir / "metrics.jsonl", self.step)
        self.log(f"resumed from {checkpoint.path} at step {self.step}")
        if safe:
            self.log(f"changed on resume: {format_changes(safe)}")
        return True

    def fit(
        self, *, resume: bool = False, overwrite: bool | None = None, stop_at: int | None = None
    ) -> dict[str, float]:
        """Train until ``config.max_steps`` (or until step ``stop_at``, e.g. to split a run in
        parts without changing its schedule); returns the last evaluation.

        ``out_dir`` is locked for the whole call (rank 0). ``resume``: continue the newest
        checkpoint (:meth:`resume`; a fresh start when there is none). A fresh run into a
        directory that holds an earlier run refuses with ``overwrite=False``; ``True`` moves the
        earlier run aside, and so does the default ``None``, with a warning
        (:func:`~performers.training.run_directory.start_fresh`). SIGTERM, SIGINT or SIGUSR1
        during the call stop the run after the current step with a checkpoint, every process
        alike (:mod:`performers.training.signals`). What rank 0 does alone (the lock, moving an
        earlier run aside, metrics, evaluation, checkpoints) raises in every process when it
        fails there (:func:`~performers.training.collective.collectively`): a full disk stops
        the whole job with the error naming the path, no process left waiting.

        Raises:
            performers.utils.DirectoryLockedError: another process is running in ``out_dir``.
            RunDirectoryError: a fresh run over an earlier one with ``overwrite=False``.
            ResumeMismatchError, NoUsableCheckpointError: see :meth:`resume`.
            Preempted: a stop signal arrived; the checkpoint of the step reached is written.
            performers.utils.DiskWriteError: a checkpoint or metrics line could not be written
                (on another process: its ``writer`` says which); earlier checkpoints are intact.
            performers.training.RankFailedError: another process of the job failed (it reports why).
        """
        if resume and overwrite:
            raise ValueError("resume and overwrite exclude each other: continue the run or replace it")
        with contextlib.ExitStack() as stack:
            with collectively(self.device):  # a directory locked by another run stops every process
                self.out_dir.mkdir(parents=True, exist_ok=True)
                if self.rank == 0:
                    stack.enter_context(owned(self.out_dir, log=self.log))
            request = stack.enter_context(preemption_signals())  # the lock outlives the handlers
            resumed = self.resume() if resume else False
            if not resumed and self.step == 0:
                # Every process refuses alike; only rank 0 moves or clears files (which may fail).
                with collectively(self.device):
                    start_fresh(self.out_dir, overwrite=overwrite, clear=self.rank == 0, log=self.log)
            return self._train(stop_at, request)

    def _train(self, stop_at: int | None, request: PreemptionRequest | None = None) -> dict[str, float]:
        """The loop of :meth:`fit`, from ``self.step``."""
        c = self.config
        self.model.train()
        start, tokens, stepping = time.perf_counter(), 0, 0.0  # stepping: time in training steps
        # A live bar on a terminal (rank 0); log lines otherwise (files, CI, other ranks).
        bar = tqdm(
            total=c.max_steps,
            initial=self.step,
            unit="step",
            dynamic_ncols=True,
            disable=self.rank != 0 or not sys.stderr.isatty(),
        )
        result: dict[str, float] = {}
        board = self._tensorboard() if self.rank == 0 else None
        stopping = None  # the stop signal all processes agreed on
        while self.step < min(c.max_steps, c.max_steps if stop_at is None else stop_at):
            step_start = time.perf_counter()
            loss_sum, step_tokens, step_positions = 0.0, 0, 0
            for _ in range(c.accumulation):
                batch = self._next_batch()
                batch_tokens = int(batch["attention_mask"].sum())  # counted on the CPU
                step_tokens += batch_tokens
                step_positions += batch["input_ids"].numel()  # real tokens and padding
                batch = to_device(batch, self.device)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=c.bf16):
                    loss, mean_loss = self._loss(batch)
                (loss / c.accumulation).backward()
                loss_sum += mean_loss / c.accumulation
                tokens += batch_tokens
                self.tokens_seen += batch_tokens
            # The norm before clipping: the record of the run's stability (spikes, NaN).
            grad_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip))
            # Underflow counts made on a GPU during this step (the host has waited for it above).
            flush_underflow_warnings()
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.redrawer.step()
            self.step += 1
            step_seconds = time.perf_counter() - step_start
            self.train_seconds += step_seconds
            stepping += step_seconds
            # Evaluation, metrics, logs and checkpoints: rank 0 alone. Every process learns
            # whether they failed (a full disk), so that none goes on to the next step's
            # collectives to wait there for a rank 0 that has stopped: the job stops here.
            # The same exchange agrees on a stop signal received by any process by now.
            with collectively(self.device, vote=lambda: _signal_of(request)) as agreed:
                if self.rank == 0:
                    record = self._record(loss_sum, step_seconds, grad_norm, step_tokens, step_positions)
                    evaluation = self._rank_zero_part(
                        record,
                        board,
                        bar,
                        rate=tokens / max(stepping, 1e-9),
                        elapsed=time.perf_counter() - start,
                        checkpoint=self._checkpoint_due(stop_at),
                    )
                    result = result if evaluation is None else evaluation
            stopping = agreed.vote or None
            if stopping:
                if not self._checkpoint_due(stop_at):  # (else written above)
                    with collectively(self.device):
                        if self.rank == 0:
                            self._checkpoint()
                break
        bar.close()
        self._close_loader()
        if board is not None:
            board.close()
        if stopping:  # (rank 0's checkpoint is written: every process left its block after it)
            raise Preempted(stopping, self.step, self.out_dir / "checkpoints")
        return result

    def _record(
        self, loss: float, seconds: float, grad_norm: float, tokens: int, positions: int
    ) -> dict[str, Any]:
        """The metrics line of the step just made."""
        return {
            "step": self.step,
            "loss": loss,
            "lr": self.scheduler.get_last_lr()[0],
            "step_seconds": seconds,
            "grad_norm": grad_norm,
            # This process's share: real tokens per second of the step, and the share of the
            # positions computed that were padding (what --pack reduces).
            "tokens_per_second": tokens / max(seconds, 1e-9),
            "padding_fraction": 1.0 - tokens / max(positions, 1),
        }

    def _checkpoint_due(self, stop_at: int | None) -> bool:
        """Whether the step just made is checkpointed: every ``checkpoint_every`` steps, the last
        one and ``stop_at``."""
        return self.step % self.config.checkpoint_every == 0 or self.step in (self.config.max_steps, stop_at)

    def _rank_zero_part(
        self, record: dict[str, Any], board, bar: tqdm, *, rate: float, elapsed: float, checkpoint: bool
    ) -> dict[str, float] | None:
        """What rank 0 alone does after a step: the evaluation when due (returned; None when
        none was), the metrics line (``record``), TensorBoard scalars, progress, the checkpoint
        when ``checkpoint``. ``rate``: training tokens/s (steps only); ``elapsed``: the run's
        time so far, evaluations included (for the ETA)."""
        evaluation = self._evaluate_into(record)
        append_line(self.out_dir / "metrics.jsonl", json.dumps(record))  # a full disk: no torn line, an error
        if board is not None:
            for key, value in record.items():
                if key != "step":
                    board.add_scalar(key, value, self.step)
        self._progress(bar, record["loss"], rate, elapsed)
        if checkpoint:
            self._checkpoint()
        return evaluation

    def _evaluate_into(self, record: dict[str, Any]) -> dict[str, float] | None:
        """The evaluation of this step when one is due (every ``eval_every`` steps and the last),
        its values added to ``record`` as ``valid_<name>``; None when none is due."""
        c = self.config
        if self.evaluate is None or not (self.step % c.eval_every == 0 or self.step == c.max_steps):
            return None
        result = self.evaluate(self.model)
        record.update({f"valid_{k}": v for k, v in result.items()})
        return result

    def _progress(self, bar: tqdm, loss: float, rate: float, elapsed: float) -> None:
        """Advance the progress bar (a terminal), or log a line every ``log_every`` steps."""
        c = self.config
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate:.0f}")
        if bar.disable and (self.step % c.log_every == 0 or self.step == c.max_steps):
            eta = (c.max_steps - self.step) * elapsed / max(1, self.step)
            self.log(f"step {self.step}/{c.max_steps} loss {loss:.4f} {rate:.0f} tok/s ETA {eta:.0f}s")

    def _tensorboard(self):
        """A SummaryWriter for ``out_dir/tensorboard`` when asked for (or, by default, when
        TensorBoard is installed); None otherwise."""
        if self.config.tensorboard is False:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if self.config.tensorboard:
                raise ImportError(
                    "tensorboard=True needs the tensorboard package: pip install tensorboard"
                ) from None
            return None
        return SummaryWriter(str(self.out_dir / "tensorboard"))
