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
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from performers.proteins.data import CausalLMCollator, MaskedLMCollator, ProteinSequences
from performers.proteins.tokenizer import ProteinTokenizer
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
        self.crop_generator = torch.Generator().manual_seed(config.seed + 1)
        self.mask_generator = torch.Generator().manual_seed(config.seed + 2)
        self.train_data = ProteinSequences(
            train_sequences, tokenizer, config.max_length, random_crop=True, generator=self.crop_generator
        )
        self.valid_sequences = list(valid_sequences)
        causal = config.task == "clm"
        self.collate = (
            CausalLMCollator(tokenizer)
            if causal
            else MaskedLMCollator(tokenizer, config.mask_prob, generator=self.mask_generator)
        )
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

    def _next_batch(self) -> dict[str, Tensor]:
        order = self._order(self.epoch)
        if self.position + self.config.batch_size > len(order):
            self.epoch, self.position = self.epoch + 1, 0
            order = self._order(self.epoch)
        indices = order[self.position : self.position + self.config.batch_size].tolist()
        self.position += self.config.batch_size
        return self.collate([self.train_data[i] for i in indices])

    def _checkpoint(self) -> None:
        save_checkpoint(
            self.out_dir / "checkpoints",
            step=self.step,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            generators={"crop": self.crop_generator, "mask": self.mask_generator},
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
        self.crop_generator.set_state(checkpoint.generators["crop"])
        self.mask_generator.set_state(checkpoint.generators["mask"])
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
        )

    def fit(self, *, resume: bool = False, stop_at: int | None = None) -> dict[str, float]:
        """Train until ``config.max_steps`` (or until step ``stop_at``, e.g. to split a run in
        parts without changing its schedule); returns the last evaluation."""
        c = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.resume()
        metrics_path = self.out_dir / "metrics.jsonl"
        self.model.train()
        start, tokens = time.perf_counter(), 0
        result: dict[str, float] = {}
        while self.step < min(c.max_steps, stop_at or c.max_steps):
            loss_sum = 0.0
            for _ in range(c.accumulation):
                batch = self._next_batch()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=c.bf16):
                    loss = self.model(
                        batch["input_ids"], batch["attention_mask"], labels=batch["labels"]
                    ).loss
                (loss / c.accumulation).backward()
                loss_sum += loss.item() / c.accumulation
                tokens += int(batch["attention_mask"].sum())
                self.tokens_seen += int(batch["attention_mask"].sum())
            nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.redrawer is not None:
                self.redrawer.step()
            self.step += 1
            record = {"step": self.step, "loss": loss_sum, "lr": self.scheduler.get_last_lr()[0]}
            if self.step % c.eval_every == 0 or self.step == c.max_steps:
                result = self.evaluate(self.valid_sequences, c.eval_batches)
                record.update({f"valid_{k}": v for k, v in result.items()})
            with open(metrics_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            if self.step % c.log_every == 0 or self.step == c.max_steps:
                elapsed = time.perf_counter() - start
                rate = tokens / max(elapsed, 1e-9)
                eta = (c.max_steps - self.step) * elapsed / max(1, self.step)
                self.log(
                    f"step {self.step}/{c.max_steps} loss {loss_sum:.4f} {rate:.0f} tok/s ETA {eta:.0f}s"
                )
            if self.step % c.checkpoint_every == 0 or self.step in (c.max_steps, stop_at):
                self._checkpoint()
        return result


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
) -> dict[str, float]:
    """Accuracy and perplexity over masked positions (``task="mlm"``) or all next tokens (``"clm"``).

    Proteins are cropped at their start to ``max_length`` tokens, and MLM masks come from a
    generator seeded with ``seed + 3`` every time, so two evaluations of the same model agree.
    """
    was_training = model.training
    model.eval()
    data = ProteinSequences(sequences, tokenizer, max_length)
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
