"""The training loop: plain PyTorch, one function a reader can follow top to bottom.

Masked (``task="mlm"``, the paper's BID) or autoregressive (``"clm"``, UNI) language modelling
on protein sequences with AdamW, linear warm-up then cosine or constant learning rate, gradient
clipping and accumulation, optional bf16 autocast, periodic evaluation, JSONL metrics and
atomic checkpoints. Resuming from a checkpoint continues *exactly*: model, optimizer,
scheduler, global RNG, the data position and the generators of crops and masks are restored,
so a resumed run ends with the same parameters, bit for bit, as an uninterrupted one (CPU).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from performers.layers.favor import projection_seed
from performers.proteins.data import (
    CausalLMCollator,
    ConcatenatedWindows,
    MaskedLMCollator,
    ProteinSequences,
    pad_batch,
)
from performers.proteins.tokenizer import ProteinTokenizer
from performers.training.checkpoint import PREFIX as CHECKPOINT_PREFIX
from performers.training.checkpoint import latest_checkpoint, save_checkpoint

__all__ = ["Trainer", "TrainingConfig", "evaluate_model", "masked_accuracy"]


@dataclass
class TrainingConfig:
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
    # False: one protein per item, randomly cropped to max_length. True: the split's proteins
    # joined with separators and cut into windows of exactly max_length tokens (the paper's
    # concatenated long-sequence setting, e.g. max_length = 8192).
    concatenate: bool = False
    # TensorBoard event files in out_dir/tensorboard: True, False, or None = when installed.
    tensorboard: bool | None = None

    def __post_init__(self) -> None:
        if self.task not in ("mlm", "clm"):
            raise ValueError(f"task must be 'mlm' or 'clm', got {self.task!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        for name in ("max_steps", "batch_size", "accumulation", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def masked_accuracy(logits: Tensor, labels: Tensor, causal: bool) -> tuple[int, int, float]:
    """``(correct, counted, summed NLL)`` over positions with a label (shifted when causal)."""
    if causal:
        logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels != -100
    picked = logits[keep].float()
    target = labels[keep]
    nll = nn.functional.cross_entropy(picked, target, reduction="sum").item() if target.numel() else 0.0
    return int((picked.argmax(-1) == target).sum()), int(target.numel()), nll


class Trainer:
    """Train ``model`` (a Performer MLM or causal LM) on protein sequences.

    Args:
        model: ``PerformerForMaskedLM`` (``task="mlm"``) or ``PerformerForCausalLM`` (``"clm"``).
        tokenizer: the vocabulary the model was built for.
        train_sequences, valid_sequences: residue strings.
        config: :class:`TrainingConfig`.
        out_dir: checkpoints (``checkpoints/``) and ``metrics.jsonl`` go here.
        log: where progress lines go.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: ProteinTokenizer,
        train_sequences: Sequence[str],
        valid_sequences: Sequence[str],
        config: TrainingConfig,
        out_dir: str | Path,
        log: Callable[[str], None] = print,
    ) -> None:
        self.model, self.tokenizer, self.config, self.log = model, tokenizer, config, log
        self.out_dir = Path(out_dir)
        # Multi-process (torchrun): every rank sees the same global batch order and takes its
        # share of each batch; projections agree without communication (seeded redraws).
        distributed = dist.is_available() and dist.is_initialized()
        self.world = dist.get_world_size() if distributed else 1
        self.rank = dist.get_rank() if distributed else 0
        if config.batch_size % self.world:
            raise ValueError(
                f"batch_size {config.batch_size} (global) must be divisible by {self.world} processes"
            )
        self.train_model = (
            DistributedDataParallel(model, broadcast_buffers=False) if self.world > 1 else model
        )
        self.train_data = (
            ConcatenatedWindows(train_sequences, tokenizer, config.max_length)
            if config.concatenate
            else ProteinSequences(train_sequences, tokenizer, config.max_length, random_crop=True)
        )
        if len(self.train_data) < config.batch_size:
            raise ValueError(
                f"the training data gives {len(self.train_data)} items of length {config.max_length}, "
                f"fewer than one batch of {config.batch_size}"
            )
        self.valid_sequences = list(valid_sequences)
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": config.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=config.learning_rate,
            betas=(0.9, 0.98),
            eps=1e-9,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.redrawer = model.feature_redrawer() if hasattr(model, "feature_redrawer") else None
        self.step = 0
        self.epoch = 0
        self.position = 0
        self.tokens_seen = 0  # non-padding tokens trained on by this process
        self.train_seconds = 0.0  # time in training steps (no evaluation or checkpoint) here

    def _lr_factor(self, step: int) -> float:
        c = self.config
        if step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        if c.schedule == "constant":
            return 1.0
        progress = (step - c.warmup_steps) / max(1, c.max_steps - c.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def _order(self, epoch: int) -> Tensor:
        # The data order of an epoch is a pure function of (seed, epoch): nothing to store.
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.train_data), generator=generator)

    def _item_generator(self, purpose: int, slot: int) -> torch.Generator:
        # Crops and masks of the item in batch slot `slot` of the current epoch are a pure
        # function of (seed, epoch, slot): independent of how a batch is split over processes,
        # and nothing to store in a checkpoint.
        return torch.Generator().manual_seed(
            projection_seed(self.config.seed, 2 * self.epoch + purpose, slot)
        )

    def _next_batch(self) -> dict[str, Tensor]:
        """This process's share of the next global batch, collated."""
        c = self.config
        order = self._order(self.epoch)
        if self.position + c.batch_size > len(order):
            self.epoch, self.position = self.epoch + 1, 0
            order = self._order(self.epoch)
        parts = []
        for slot in range(self.position + self.rank, self.position + c.batch_size, self.world):
            item = self.train_data.get(int(order[slot]), self._item_generator(0, slot))
            if c.task == "clm":
                parts.append(CausalLMCollator(self.tokenizer)([item]))
            else:
                collate = MaskedLMCollator(
                    self.tokenizer, c.mask_prob, generator=self._item_generator(1, slot)
                )
                parts.append(collate([item]))
        self.position += c.batch_size
        return pad_batch(parts, self.tokenizer.pad_id)

    def _loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, float]:
        """Loss to back-propagate, and the global mean loss (for logging).

        The token-level cross-entropy sum of this process's share is divided by the number of
        labelled tokens in the *global* batch (and multiplied by the process count, which
        DistributedDataParallel divides the summed gradients by): every process count gives
        the gradient of the same global mean.
        """
        logits = self.train_model(batch["input_ids"], batch["attention_mask"]).logits
        labels = batch["labels"]
        if self.config.task == "clm":
            logits, labels = logits[:, :-1], labels[:, 1:]
        total = nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum"
        )
        stats = torch.tensor([float((labels != -100).sum()), total.item()])
        if self.world > 1:
            dist.all_reduce(stats)
        count = max(stats[0].item(), 1.0)
        return total * (self.world / count), stats[1].item() / count

    def _checkpoint(self) -> None:
        save_checkpoint(
            self.out_dir / "checkpoints",
            step=self.step,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            state={"epoch": self.epoch, "position": self.position, "config": asdict(self.config)},
            keep_last=self.config.keep_last,
        )

    def resume(self) -> bool:
        """Restore the newest usable checkpoint under ``out_dir``; False if there is none."""
        checkpoint = latest_checkpoint(self.out_dir / "checkpoints")
        if checkpoint is None:
            return False
        self.model.load_state_dict(checkpoint.model)
        self.optimizer.load_state_dict(checkpoint.optimizer)
        self.scheduler.load_state_dict(checkpoint.scheduler)
        torch.set_rng_state(checkpoint.torch_rng)
        self.step = checkpoint.step
        self.epoch, self.position = checkpoint.state["epoch"], checkpoint.state["position"]
        # Metrics written after this checkpoint by the interrupted run are dropped.
        metrics = self.out_dir / "metrics.jsonl"
        if metrics.exists():
            lines = metrics.read_text().splitlines()
            kept = [line for line in lines if json.loads(line)["step"] <= self.step]
            metrics.write_text("".join(line + "\n" for line in kept))
        self.log(f"resumed from {checkpoint.path} at step {self.step}")
        return True

    def evaluate(self, sequences: Sequence[str], max_batches: int | None = None) -> dict[str, float]:
        """See :func:`evaluate_model`; uses this run's task, lengths and seed."""
        c = self.config
        return evaluate_model(
            self.model,
            self.tokenizer,
            sequences,
            task=c.task,
            max_length=c.max_length,
            batch_size=c.batch_size,
            mask_prob=c.mask_prob,
            seed=c.seed,
            max_batches=max_batches,
            concatenate=c.concatenate,
        )

    def fit(self, *, resume: bool = False, stop_at: int | None = None) -> dict[str, float]:
        """Train until ``config.max_steps`` (or until step ``stop_at``, e.g. to split a run in
        parts without changing its schedule); returns the last evaluation."""
        c = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        metrics_path = self.out_dir / "metrics.jsonl"
        resumed = self.resume() if resume else False
        if not resumed and self.step == 0 and self.rank == 0:
            # A fresh run owns its metrics: never mix them with those of an earlier run here.
            metrics_path.unlink(missing_ok=True)
            shutil.rmtree(self.out_dir / "tensorboard", ignore_errors=True)
            if any((self.out_dir / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*")):
                self.log(
                    f"{self.out_dir}: starting a fresh run over existing checkpoints "
                    "(pass resume=True / --resume to continue them)"
                )
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
        while self.step < min(c.max_steps, c.max_steps if stop_at is None else stop_at):
            step_start = time.perf_counter()
            loss_sum = 0.0
            for _ in range(c.accumulation):
                batch = self._next_batch()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=c.bf16):
                    loss, mean_loss = self._loss(batch)
                (loss / c.accumulation).backward()
                loss_sum += mean_loss / c.accumulation
                tokens += int(batch["attention_mask"].sum())
                self.tokens_seen += int(batch["attention_mask"].sum())
            nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.redrawer is not None:
                self.redrawer.step()
            self.step += 1
            step_seconds = time.perf_counter() - step_start
            self.train_seconds += step_seconds
            stepping += step_seconds
            if self.rank != 0:  # evaluation, metrics, logs and checkpoints: rank 0 only
                continue
            record = {
                "step": self.step,
                "loss": loss_sum,
                "lr": self.scheduler.get_last_lr()[0],
                "step_seconds": step_seconds,
            }
            if self.step % c.eval_every == 0 or self.step == c.max_steps:
                result = self.evaluate(self.valid_sequences, c.eval_batches)
                record.update({f"valid_{k}": v for k, v in result.items()})
            with open(metrics_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            if board is not None:
                for key, value in record.items():
                    if key != "step":
                        board.add_scalar(key, value, self.step)
            elapsed = time.perf_counter() - start  # for the ETA: evaluations included
            rate = tokens / max(stepping, 1e-9)  # training tokens/s: steps only
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.4f}", tok_s=f"{rate:.0f}")
            if bar.disable and (self.step % c.log_every == 0 or self.step == c.max_steps):
                eta = (c.max_steps - self.step) * elapsed / max(1, self.step)
                self.log(
                    f"step {self.step}/{c.max_steps} loss {loss_sum:.4f} {rate:.0f} tok/s ETA {eta:.0f}s"
                )
            if self.step % c.checkpoint_every == 0 or self.step in (c.max_steps, stop_at):
                self._checkpoint()
        bar.close()
        if board is not None:
            board.close()
        return result

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


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    tokenizer: ProteinTokenizer,
    sequences: Sequence[str],
    *,
    task: str,
    max_length: int,
    batch_size: int = 16,
    mask_prob: float = 0.15,
    seed: int = 0,
    max_batches: int | None = None,
    concatenate: bool = False,
) -> dict[str, float]:
    """Accuracy and perplexity over masked positions (``task="mlm"``) or all next tokens (``"clm"``).

    Proteins are cropped at their start to ``max_length`` tokens (or, with ``concatenate``,
    joined and cut into windows of ``max_length``), and MLM masks come from a generator seeded
    with ``seed + 3`` every time, so two evaluations of the same model agree.
    """
    was_training = model.training
    model.eval()
    data = (
        ConcatenatedWindows(sequences, tokenizer, max_length)
        if concatenate
        else ProteinSequences(sequences, tokenizer, max_length)
    )
    if len(data) == 0:
        raise ValueError(f"the evaluation sequences give no window of {max_length} tokens")
    collate = (
        CausalLMCollator(tokenizer)
        if task == "clm"
        else MaskedLMCollator(tokenizer, mask_prob, generator=torch.Generator().manual_seed(seed + 3))
    )
    correct = counted = 0
    nll = 0.0
    for b, start in enumerate(range(0, len(data), batch_size)):
        if max_batches is not None and b >= max_batches:
            break
        batch = collate([data[i] for i in range(start, min(start + batch_size, len(data)))])
        logits = model(batch["input_ids"], batch["attention_mask"]).logits
        right, n, loss = masked_accuracy(logits, batch["labels"], causal=task == "clm")
        correct, counted, nll = correct + right, counted + n, nll + loss
    model.train(was_training)
    if counted == 0:
        raise ValueError("evaluation set produced no labelled position")
    return {"accuracy": correct / counted, "perplexity": math.exp(nll / counted), "tokens": counted}
