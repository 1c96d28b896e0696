"""Preemption signals (SIGTERM, SIGINT, SIGUSR1) stop a run after the current optimizer step with
a checkpoint, release the run directory and restore the caller's handlers; a resume continues
exactly. In process (the signal sent to this process from inside a step) and through real
``performers train`` processes, alone and as a two-process gloo job (data parallel, and context
parallel)."""

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from performers.cli import main
from performers.training import (
    EXIT_STATUS,
    Preempted,
    Trainer,
    latest_checkpoint,
    preemption_signals,
    signals,
)
from performers.utils import load_safetensors
from tests.training.test_trainer import run

ROOT = Path(__file__).resolve().parents[2]  # the repository root: tests is a package


def _signal_during_step(monkeypatch, step: int, *signums: int) -> None:
    """Send ``signums`` to this process while the batch of step ``step + 1`` is being built."""
    next_batch = Trainer._next_batch

    def sending(self):
        if self.step == step:
            for signum in signums:
                os.kill(os.getpid(), signum)
        return next_batch(self)

    monkeypatch.setattr(Trainer, "_next_batch", sending)


def _released(out: Path) -> bool:
    return (out / ".lock").read_text() == ""  # no holder recorded: the next run sees no stale lock


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """The parameters of the eight-step run, uninterrupted."""
    model, _ = run(tmp_path_factory.mktemp("reference"), max_steps=8)
    return model.state_dict()


@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGUSR1, 0), (signal.SIGINT, 130)]
)
def test_a_signal_stops_after_the_step_with_a_checkpoint_and_the_resume_is_exact(
    tmp_path, monkeypatch, uninterrupted, signum, status
):
    out = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        _signal_during_step(patch, 4, signum)  # between the checkpoints of steps 3 and 6
        with pytest.raises(Preempted) as stopped:
            run(out, max_steps=8)
    assert (stopped.value.signum, stopped.value.step, stopped.value.exit_status) == (signum, 5, status)
    assert EXIT_STATUS[signum] == status
    assert stopped.value.checkpoints == out / "checkpoints"
    assert str(pickle.loads(pickle.dumps(stopped.value))) == str(stopped.value)  # crosses processes
    assert latest_checkpoint(out / "checkpoints").step == 5  # the step reached, not the last periodic one
    assert _released(out)
    resumed, trainer = run(out, resume=True, max_steps=8)
    assert trainer.step == 8
    _assert_same_weights(uninterrupted, resumed.state_dict())


def test_ctrl_c_twice_aborts_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(signals, "ECHO_SECONDS", 0.0)  # the second press without waiting a second
    _signal_during_step(monkeypatch, 1, signal.SIGINT, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, max_steps=8)
    assert latest_checkpoint(tmp_path / "checkpoints") is None  # aborted inside step 2: nothing saved
    assert _released(tmp_path)


def test_a_ctrl_c_passed_on_at_once_by_a_launcher_is_not_a_second_press(tmp_path, monkeypatch):
    _signal_during_step(monkeypatch, 1, signal.SIGINT, signal.SIGINT)  # (torchrun passes it on)
    with pytest.raises(Preempted) as stopped:
        run(tmp_path, max_steps=8)
    assert stopped.value.step == 2 and latest_checkpoint(tmp_path / "checkpoints").step == 2


def test_the_callers_handlers_are_restored_after_a_run(tmp_path, monkeypatch):
    def mine(signum, frame):
        pass

    seen = {}
    next_batch = Trainer._next_batch

    def looking(self):
        seen.update({s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)})
        return next_batch(self)

    monkeypatch.setattr(Trainer, "_next_batch", looking)
    previous = {s: signal.signal(s, mine) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    try:
        run(tmp_path, max_steps=2)
        assert all(handler is not mine for handler in seen.values())  # the run's own, during it
        assert all(signal.getsignal(s) is mine for s in previous)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def test_a_signal_the_run_did_not_act_on_is_delivered_to_the_callers_handler_afterwards():
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    try:
        with preemption_signals() as request:
            os.kill(os.getpid(), signal.SIGUSR1)  # e.g. while the last checkpoint is written
            assert request.signum == signal.SIGUSR1 and received == []
        assert received == [signal.SIGUSR1]
        with pytest.raises(Preempted), preemption_signals():  # acted on: not delivered again
            os.kill(os.getpid(), signal.SIGUSR1)
            raise Preempted(signal.SIGUSR1, 1, None)
        assert received == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_outside_the_main_thread_signals_keep_their_handlers():
    import threading

    before = signal.getsignal(signal.SIGTERM)
    inside = []

    def enter():
        with preemption_signals() as request:
            inside.append((signal.getsignal(signal.SIGTERM), request.signum))

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    assert inside == [(before, None)]


# `performers train` in a process of its own, each step slowed so that a signal from outside lands
# mid-run (the tiny model's steps take milliseconds); everything else is the real command.
SLOW_TRAIN = """
import os, sys, time
import performers.training.signals as signals
from performers.training import Trainer
signals.ECHO_SECONDS = float(os.environ.get("TEST_ECHO_SECONDS", signals.ECHO_SECONDS))
next_batch = Trainer._next_batch
def slow(self):
    time.sleep(0.05)
    return next_batch(self)
Trainer._next_batch = slow
from performers.cli import main
sys.exit(main(sys.argv[1:]))
"""

ARGS = [
    "train", "--task", "clm", "--steps", "40", "--batch-size", "4", "--max-length", "32",
    "--d-model", "16", "--layers", "1", "--heads", "2", "--d-ff", "32", "--num-features", "8",
    "--eval-every", "100", "--train-limit", "16", "--test-limit", "4",
    "--threads", "1",
]  # fmt: skip


def _start(
    out: Path, env: dict | None = None, workers: int = 0, extra: tuple[str, ...] = ()
) -> subprocess.Popen:
    """``performers train`` in a session of its own (a process group to signal as a whole)."""
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_TRAIN, *ARGS, "--workers", str(workers), "--out", str(out), *extra],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})},
        start_new_session=True,
    )


def _wait_for_a_step(out: Path, *processes: subprocess.Popen) -> None:
    """Until rank 0 has logged step 1 (the run is inside its loop)."""
    deadline = time.monotonic() + 120
    metrics = out / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().strip()):
        assert all(p.poll() is None for p in processes), "training ended early"
        assert time.monotonic() < deadline, "no step in time"
        time.sleep(0.02)


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sigterm_to_performers_train_checkpoints_exits_143_and_the_resume_is_exact(tmp_path):
    """The signal goes to every process of the command, its loader worker too (as a terminal's
    Ctrl-C, or a scheduler that signals a job's processes): the worker leaves it to the trainer."""
    out = tmp_path / "stopped"
    process = _start(out, workers=1)
    _wait_for_a_step(out, process)
    os.killpg(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-2000:]
    step = latest_checkpoint(out / "checkpoints").step
    assert 1 <= step < 40 and _steps(out)[-1] == step
    assert f"stopped by SIGTERM at step {step}; checkpoint written to {out / 'checkpoints'}" in err
    assert f"resume with: performers {' '.join(ARGS)} --workers 1 --out {out} --resume" in err
    assert _released(out)
    assert main([*ARGS, "--workers", "0", "--out", str(out), "--resume"]) == 0  # (same batches)
    assert main([*ARGS, "--workers", "0", "--out", str(tmp_path / "reference")]) == 0
    resumed, _ = load_safetensors(out / "final" / "model.safetensors")
    reference, _ = load_safetensors(tmp_path / "reference" / "final" / "model.safetensors")
    _assert_same_weights(reference, resumed)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Multi-process (make test-slow, which CI runs): make test stays within its 10 minutes.
@pytest.mark.slow
def test_sigterm_to_one_process_of_a_two_process_ddp_run_stops_both_after_the_same_step(tmp_path):
    """Rank 1 alone gets the signal (a launcher that signals one process, and not the one that
    writes checkpoints): the ranks agree, rank 0 writes the checkpoint, both exit 143. (SLURM
    signals every task: the same agreement, each rank having its own signal.)"""
    out = tmp_path / "ddp"
    job = {
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    ranks = [_start(out, {**job, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(2)]
    _wait_for_a_step(out, *ranks)
    ranks[1].send_signal(signal.SIGTERM)
    errors = [process.communicate(timeout=120)[1] for process in ranks]
    assert [p.returncode for p in ranks] == [143, 143], errors[0][-2000:] + errors[1][-2000:]
    step = latest_checkpoint(out / "checkpoints").step
    assert 1 <= step < 40 and _steps(out)[-1] == step  # rank 0 logged no step beyond the checkpoint
    assert "resume with:" in errors[0] and "resume with:" not in errors[1]  # one line per job
    assert _released(out)


def _ddp_job() -> dict:
    job = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}
    return {**job, "MASTER_PORT": str(_free_port())}


def _run_ddp(out: Path, extra: tuple[str, ...] = ()) -> None:
    job = _ddp_job()
    ranks = [_start(out, {**job, "RANK": str(r), "LOCAL_RANK": str(r)}, extra=extra) for r in range(2)]
    errors = [process.communicate(timeout=300)[1] for process in ranks]
    assert [p.returncode for p in ranks] == [0, 0], errors[0][-2000:] + errors[1][-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), ("--context-parallel", "2")], ids=["ddp", "context-parallel"])
def test_a_two_process_run_stopped_by_sigterm_on_every_rank_resumes_equal_to_an_uninterrupted_one(
    tmp_path, extra
):
    """SLURM's way: every task gets SIGTERM. Both ranks stop after the same step, and a two-process
    ``--resume`` ends with the weights of an uninterrupted two-process run, tensor for tensor: data
    parallel (DDP), and context parallel (each protein split over the two processes, which
    exchange FAVOR's summaries inside every step: the signal still lands between steps)."""
    out = tmp_path / "stopped"
    job = _ddp_job()
    ranks = [_start(out, {**job, "RANK": str(r), "LOCAL_RANK": str(r)}, extra=extra) for r in range(2)]
    _wait_for_a_step(out, *ranks)
    for process in ranks:
        process.send_signal(signal.SIGTERM)
    errors = [process.communicate(timeout=120)[1] for process in ranks]
    assert [p.returncode for p in ranks] == [143, 143], errors[0][-2000:] + errors[1][-2000:]
    step = latest_checkpoint(out / "checkpoints").step
    assert 1 <= step < 40 and _steps(out)[-1] == step and _released(out)
    _run_ddp(out, extra=(*extra, "--resume"))
    _run_ddp(tmp_path / "reference", extra=extra)
    resumed, _ = load_safetensors(out / "final" / "model.safetensors")
    reference, _ = load_safetensors(tmp_path / "reference" / "final" / "model.safetensors")
    _assert_same_weights(reference, resumed)


def test_ctrl_c_twice_in_a_real_process_aborts_at_once_and_leaves_the_lock_free(tmp_path):
    """The first SIGINT asks for a clean stop; a second one aborts at once (KeyboardInterrupt: the
    process ends by SIGINT), without the clean stop's checkpoint, the lock free for the next run.
    (The launcher-echo window is set to 0 here, so the second press may follow the first at once.)"""
    out = tmp_path / "aborted"
    process = _start(out, {"TEST_ECHO_SECONDS": "0"})
    _wait_for_a_step(out, process)
    process.send_signal(signal.SIGINT)
    # The second press only after the first was handled: two SIGINTs that arrive before Python
    # runs its handler are one signal to the process (a pending signal is not queued twice).
    seen = []
    while not any("SIGINT received" in line for line in seen):
        line = process.stderr.readline()
        assert line, "the process ended before acknowledging the first SIGINT: " + "".join(seen)[-2000:]
        seen.append(line)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    err = "".join(seen) + err
    assert process.returncode == -signal.SIGINT, err[-2000:]
    assert "KeyboardInterrupt" in err and "stopped by SIGINT" not in err
    assert _released(out)
