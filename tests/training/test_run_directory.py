"""A run directory belongs to one run: a lock for the whole run (stale after kill -9: taken over),
and a fresh run refuses a directory holding an earlier run unless told to overwrite it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from performers.cli import main
from performers.jobs.proteins import protein_trainer
from performers.training import RunDirectoryError, owned, start_fresh
from performers.training.run_directory import move_aside
from performers.utils import DirectoryLock, DirectoryLockedError
from tests.cli.test_proteins import TINY_TRAIN
from tests.training.test_trainer import TOK, config, motif_proteins, run, tiny_model

HOLD = """
import sys, time
from performers.utils import DirectoryLock
lock = DirectoryLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding ``tmp_path/"out"``'s lock; yields (directory, process)."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield out, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_a_second_run_into_a_locked_directory_stops_at_once_naming_the_holder(holder, cli_error):
    out, proc = holder
    with pytest.raises(DirectoryLockedError, match=rf"in use by another run \(pid {proc.pid} on host "):
        run(out, "clm", max_steps=1)
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    cli_error([*TINY_TRAIN, "--out", str(out)], match=rf"pid {proc.pid} on host {socket.gethostname()}")


def test_the_lock_of_a_killed_run_is_taken_over(holder):
    out, proc = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lines = []
    with owned(out, log=lines.append):
        record = json.loads((out / ".lock").read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert len(lines) == 1 and f"pid {proc.pid}" in lines[0] and "ended without releasing" in lines[0]
    assert (out / ".lock").read_text() == ""  # released cleanly: the next run sees no stale lock
    with owned(out, log=lines.append):
        pass
    assert len(lines) == 1


def test_the_lock_is_held_for_the_whole_run_and_reentrant(tmp_path):
    seen = []

    def evaluate(model):
        seen.append(json.loads((tmp_path / ".lock").read_text())["pid"])
        return {}

    trainer = protein_trainer(
        tiny_model("clm"), TOK, motif_proteins(64), motif_proteins(8, seed=1), config(), tmp_path
    )
    trainer.evaluate = evaluate
    with DirectoryLock(tmp_path):  # a command's own lock around the loop: entered again inside
        trainer.fit()
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert seen == [os.getpid(), os.getpid()]
    assert (tmp_path / ".lock").read_text() == ""


def test_a_held_lock_refuses_without_waiting_for_a_live_holder(tmp_path):
    code = textwrap.dedent(f"""
        from performers.utils import DirectoryLock, DirectoryLockedError
        try:
            DirectoryLock({str(tmp_path)!r}).acquire()
        except DirectoryLockedError as error:
            print(error)
    """)
    with DirectoryLock(tmp_path):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert f"pid {os.getpid()} on host" in result.stdout


def test_overwrite_moves_only_the_earlier_run_aside(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints" / "step-00000004").mkdir(parents=True)
    (out / "final").mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "results.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunDirectoryError, match=r"checkpoints step-00000004, final/"):
        start_fresh(out, overwrite=False)
    assert (out / "checkpoints" / "step-00000004").is_dir()  # a refusal touches nothing
    lines = []
    start_fresh(out, overwrite=True, log=lines.append)
    (old,) = tmp_path.glob("run.old-*")
    assert sorted(p.name for p in old.iterdir()) == ["checkpoints", "final", "metrics.jsonl", "results.json"]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert lines == [f"{out}: moved the earlier run to {old}"]
    (out / "final").mkdir()
    assert move_aside(out).name.startswith("run.old-") and len(list(tmp_path.glob("run.old-*"))) == 2


def test_cli_train_refuses_a_used_directory_unless_resume_or_overwrite(tmp_path, capsys, cli_error):
    out = tmp_path / "out"
    assert main([*TINY_TRAIN, "--out", str(out)]) == 0
    cli_error(
        [*TINY_TRAIN, "--seed", "3", "--out", str(out)],
        match=r"holds an earlier run \(checkpoints .*final/\).*--overwrite",
    )
    cli_error([*TINY_TRAIN, "--out", str(out), "--resume", "--overwrite"], match="not both")
    assert main([*TINY_TRAIN, "--seed", "3", "--out", str(out), "--overwrite"]) == 0
    (old,) = tmp_path.glob("out.old-*")
    assert (old / "final" / "model.safetensors").is_file()
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert "moved the earlier run" in capsys.readouterr().out
