"""Worker processes of tests/training/test_collective.py: a two-process gloo job in which one
process fails at what it does alone — rank 0's writes refused for real by a file size limit
(RLIMIT_FSIZE, set in rank 0's process only), an error raised on rank 1 — and every process
records what it then raised. The cases run one after the other in the same job: a case that left
one process behind would hang the next one (the job's timeout turns that into a failure).

Not a test module (pytest does not collect it): torch.multiprocessing imports it in the
spawned processes.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import resource
import signal
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from performers import FavorConfig
from performers.jobs import protein_model_config
from performers.jobs.proteins import protein_trainer, train_protein_model
from performers.models import build_model
from performers.proteins import ProteinTokenizer
from performers.training import Trainer, TrainingConfig, collectively, once_per_job
from performers.utils import atomic_write, sha256
from tests.helpers.context_parallel_workers import variable_proteins

# A hang (a process left waiting) fails within this time instead of gloo's 30 minutes.
TIMEOUT = datetime.timedelta(seconds=60)


def limit_file_size(size: int | None) -> None:
    """This process may write files up to ``size`` bytes (None: no limit). SIGXFSZ is ignored
    (Python does so at startup anyway), so a write past the limit fails with EFBIG."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard if size is None else size, hard))


def snapshot(directory: Path) -> dict[str, str]:
    """The SHA-256 of every file under ``directory`` (hidden ones included)."""
    return {str(p.relative_to(directory)): sha256(p) for p in sorted(directory.rglob("*")) if p.is_file()}


def tiny_config():
    return protein_model_config(
        d_model=16, num_layers=1, num_heads=2, d_ff=32, max_length=32, dropout=0.0, favor=FavorConfig(8)
    )


def tiny_trainer(out: Path, *, max_steps: int, checkpoint_every: int, evaluate: Callable) -> Trainer:
    """A tiny causal protein LM on both processes; ``evaluate`` (rank 0, every step) is the
    test's hook into the step, called before the step's metrics line and checkpoint."""
    torch.manual_seed(0)
    model = build_model(tiny_config(), "clm")
    training = TrainingConfig(
        task="clm", max_steps=max_steps, batch_size=4, max_length=32, warmup_steps=1, eval_every=1,
        checkpoint_every=checkpoint_every, log_every=100, tensorboard=False,
    )  # fmt: skip
    tokenizer = ProteinTokenizer()
    train, valid = variable_proteins(16), variable_proteins(4, seed=1)
    trainer = protein_trainer(model, tokenizer, train, valid, training, out, log=lambda _: None)
    trainer.evaluate = evaluate
    return trainer


def write_corpus(path: Path) -> None:
    """A tagged FASTA of 16 train, 4 valid and 4 test proteins (the shipped corpus takes seconds
    to parse)."""
    splits = ["train"] * 16 + ["valid"] * 4 + ["test"] * 4
    records = zip(variable_proteins(24), splits, strict=True)
    path.write_text("".join(f">p{i} split={split}\n{seq}\n" for i, (seq, split) in enumerate(records)))


def case_vote(rank: int, out: Path) -> Any:
    with collectively(vote=lambda: 15 if rank == 1 else 0) as agreed:
        pass
    return agreed.vote


def case_refused_write(rank: int, out: Path) -> Any:
    path = out / "refused" / "report.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    with collectively():
        if rank == 0:
            limit_file_size(100)
            try:
                atomic_write(path, lambda tmp: tmp.write_bytes(bytes(1000)), size=1000)
            finally:
                limit_file_size(None)


def case_rank_1_fails(rank: int, out: Path) -> Any:
    with collectively():
        if rank == 1:
            raise ValueError("bad value on rank 1")


def case_both_fail(rank: int, out: Path) -> Any:
    with collectively():
        raise KeyError(f"rank {rank}'s own")


def case_once_per_job(rank: int, out: Path) -> Any:
    def make():
        if rank == 0:
            raise ValueError("malformed FASTA")
        return "made"

    return once_per_job(make)


def case_locked(rank: int, out: Path) -> Any:
    """``out / "locked"`` is held by the test's own process (alive): rank 0 cannot take it."""
    trainer = tiny_trainer(out / "locked", max_steps=2, checkpoint_every=2, evaluate=lambda model: {})
    trainer.fit()


def case_metrics_line(rank: int, out: Path) -> Any:
    run = out / "metrics"

    def fill_the_disk(model) -> dict:
        if trainer.step == 3:  # the metrics line of step 3 will not fit
            limit_file_size((run / "metrics.jsonl").stat().st_size)
        return {}

    trainer = tiny_trainer(run, max_steps=5, checkpoint_every=100, evaluate=fill_the_disk)
    try:
        trainer.fit()
    finally:
        limit_file_size(None)


def case_checkpoint(rank: int, out: Path) -> Any:
    run = out / "checkpoint"

    def fill_the_disk(model) -> dict:
        if trainer.step == 4:  # step 2's checkpoint is written; step 4's will not fit
            (out / "checkpoints-before.json").write_text(json.dumps(snapshot(run / "checkpoints")))
            limit_file_size((run / "metrics.jsonl").stat().st_size + 1000)  # the metrics line fits
        return {}

    trainer = tiny_trainer(run, max_steps=6, checkpoint_every=2, evaluate=fill_the_disk)
    try:
        trainer.fit()
    finally:
        limit_file_size(None)


def case_final(rank: int, out: Path) -> Any:
    """``train_protein_model`` as ``performers train`` runs it; once training (its last
    checkpoint included) is done, rank 0's disk is full: ``final/`` cannot be written."""
    fit = Trainer.fit

    def fit_then_fill(self, **kwargs):
        result = fit(self, **kwargs)
        if self.rank == 0:
            limit_file_size(1000)
        return result

    training = TrainingConfig(
        task="clm", max_steps=2, batch_size=4, max_length=32, eval_every=2, log_every=100, tensorboard=False
    )
    Trainer.fit = fit_then_fill
    try:
        train_protein_model(tiny_config(), training, out_dir=out / "final-run", corpus=out / "corpus.fasta")
    finally:
        Trainer.fit = fit
        limit_file_size(None)


CASES = {name.removeprefix("case_"): value for name, value in globals().items() if name.startswith("case_")}


def outcome(case: Callable[[int, Path], Any], rank: int, out: Path) -> dict[str, Any]:
    """What ``case`` returned, or the exception it raised (its type, text and ``writer``)."""
    try:
        return {"returned": case(rank, out)}
    except Exception as error:
        return {
            "raised": type(error).__name__,
            "message": str(error),
            "writer": getattr(error, "writer", None),
        }


def worker(rank: int, world: int, store: str, out: str, report: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world, timeout=TIMEOUT
    )
    try:
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # the runs' progress
            results = {name: outcome(case, rank, Path(out)) for name, case in CASES.items()}
        Path(f"{report}.{rank}.json").write_text(json.dumps(results))
    except BaseException:
        Path(f"{report}.{rank}.failure").write_text(traceback.format_exc())
        os._exit(1)
    dist.destroy_process_group()
