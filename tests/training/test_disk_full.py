"""A full disk during training loses nothing: a checkpoint or ``final/`` that cannot be written
leaves the earlier ones byte-identical, removes its partial files and stops the run with one
error naming the path and the bytes needed; the run resumes from the previous checkpoint.

Full disks are simulated without root: an injected ENOSPC in the middle of a file, and a real
``RLIMIT_FSIZE`` (with SIGXFSZ ignored, so the write fails with EFBIG) around one checkpoint, or
set from outside on rank 0 of a running two-process ``performers train`` job (both processes
stop; tests/training/test_collective.py has the other writes of such a job).
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from performers.cli import main
from performers.training import load_checkpoint, save_checkpoint
from performers.utils import DiskWriteError
from tests.cli.test_proteins import TINY
from tests.training.test_signals import _ddp_job, _released, _start, _steps
from tests.utils.test_files import file_size_limit  # noqa: F401  (a fixture)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (hidden ones included) with its bytes."""
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def disk_full_in(monkeypatch, name: str) -> list[Path]:
    """safetensors writes fail with ENOSPC, half-way, for a file whose path contains ``name``
    (the others are written); returns the list of paths that failed."""
    real, failed = safetensors.torch.save_file, []

    def save_file(tensors, filename, metadata=None):
        if name not in str(filename):
            return real(tensors, filename, metadata=metadata)
        failed.append(Path(filename))
        Path(filename).write_bytes(b"\0" * 100)  # what got onto the disk before it filled
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    return failed


def tiny_state():
    torch.manual_seed(0)
    model = nn.Linear(64, 64)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 64)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_a_checkpoint_on_a_full_disk_leaves_the_earlier_ones_and_no_temporaries(tmp_path, monkeypatch):
    model, optimizer = tiny_state()
    save_checkpoint(tmp_path, step=1, model=model, optimizer=optimizer)
    before = snapshot(tmp_path)
    failed = disk_full_in(monkeypatch, "optimizer")
    with pytest.raises(DiskWriteError) as caught:
        save_checkpoint(tmp_path, step=2, model=model, optimizer=optimizer)
    assert failed and snapshot(tmp_path) == before  # step 1 intact, step 2's partial files gone
    tensor_bytes = (64 * 64 + 64) * 4 * 3  # weights + AdamW's two moments, float32
    error = caught.value
    assert error.path == tmp_path / "step-00000002" and error.errno == errno.ENOSPC
    assert tensor_bytes <= error.needed < tensor_bytes + 10_000  # + the step counts and RNG state
    assert str(error).startswith(f"{tmp_path / 'step-00000002'}: cannot be written (No space left on device)")


def test_final_model_on_a_full_disk_keeps_the_earlier_one(tmp_path, monkeypatch):
    from performers import PerformerConfig, PerformerModel

    model = PerformerModel(PerformerConfig(vocab_size=8, d_model=8, num_layers=1, num_heads=2, d_ff=16))
    model.save_pretrained(tmp_path / "final")
    before = snapshot(tmp_path)
    disk_full_in(monkeypatch, "model.safetensors")
    with pytest.raises(
        DiskWriteError, match=f"^{tmp_path / 'final' / 'model.safetensors'}: cannot be written"
    ):
        model.save_pretrained(tmp_path / "final")
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_checkpoint_past_a_real_file_size_limit(tmp_path, file_size_limit):  # noqa: F811
    model, optimizer = tiny_state()
    save_checkpoint(tmp_path, step=1, model=model, optimizer=optimizer)
    before = snapshot(tmp_path)
    file_size_limit(20_000)  # the weights (16.6 kB) fit, the optimizer's moments (33 kB) do not
    try:
        with pytest.raises(DiskWriteError) as caught:
            save_checkpoint(tmp_path, step=2, model=model, optimizer=optimizer)
    finally:
        file_size_limit(resource.RLIM_INFINITY)
    # safetensors (Rust) reported the kernel's EFBIG in its own exception type.
    assert caught.value.errno == errno.EFBIG
    assert str(caught.value).startswith(f"{tmp_path / 'step-00000002'}: cannot be written (File too large)")
    assert snapshot(tmp_path) == before
    assert load_checkpoint(tmp_path / "step-00000001").step == 1


def lock_is_free(directory: Path) -> bool:
    import fcntl

    fd = os.open(directory / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new open file: conflicts with any holder
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_training_stops_on_a_failed_checkpoint_and_resumes_from_the_previous_one(
    tmp_path, monkeypatch, cli_error
):
    out = tmp_path / "run"
    args = ["train", "--task", "clm", *TINY, "--train-limit", "16", "--test-limit", "4", "--workers", "0"]
    args += ["--out", str(out)]  # 4 steps, checkpoints at steps 2 and 4
    failed = disk_full_in(monkeypatch, "step-00000004")
    kept = {}
    real_save = save_checkpoint.__globals__["atomic_directory"]

    def watching(path, **kwargs):  # the checkpoints as they were just before the failing one
        if Path(path).name == "step-00000004":
            kept.update(snapshot(out / "checkpoints"))
        return real_save(path, **kwargs)

    monkeypatch.setitem(save_checkpoint.__globals__, "atomic_directory", watching)
    line = cli_error(
        args, match=r"step-00000004: cannot be written \(No space left on device\): it needs about"
    )
    assert "earlier files are intact" in line and failed
    assert kept and snapshot(out / "checkpoints") == kept  # step 2 byte-identical, nothing else
    assert not (out / "final").exists()  # the run stopped: it did not go on without checkpoints
    assert lock_is_free(out)
    monkeypatch.undo()  # space again
    assert main([*args, "--resume"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4] and (out / "final" / "model.safetensors").is_file()


def _complete_checkpoints(directory: Path) -> dict[str, bytes]:
    """The files of the checkpoints renamed into place (not those being written)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.glob("step-*/*"))}


@pytest.mark.slow  # a real 2-process performers train (make test-slow)
@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="setting another process's limit is Linux's")
def test_a_checkpoint_rank_0_cannot_write_stops_both_processes_of_a_ddp_run(tmp_path):
    """``performers train`` as a two-process gloo job, checkpointing every 10 steps. Once the
    first checkpoint is written, rank 0's process may write no file past 30 kB (a real
    ``RLIMIT_FSIZE``, set from outside on that process alone): its next checkpoint (45 kB of
    weights) is refused. Both processes stop, with the error naming the path and the bytes —
    none is left waiting in the next step's all-reduce for a rank 0 that has stopped."""
    out = tmp_path / "ddp"
    job = _ddp_job()
    larger = ("--d-model", "32", "--d-ff", "64", "--eval-every", "10")  # (the last value counts)
    ranks = [_start(out, {**job, "RANK": str(r), "LOCAL_RANK": str(r)}, extra=larger) for r in range(2)]
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "step-00000010").exists():
        assert all(p.poll() is None for p in ranks), "training ended early"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.01)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.prlimit(ranks[0].pid, resource.RLIMIT_FSIZE, (30_000, hard))
    before = _complete_checkpoints(out / "checkpoints")
    errors = [process.communicate(timeout=120)[1] for process in ranks]  # (a hang fails here)
    assert [p.returncode for p in ranks] == [2, 2], errors[0][-2000:] + errors[1][-2000:]
    lines = [err.strip().splitlines()[-1] for err in errors]
    checkpoints = re.escape(str(out / "checkpoints"))
    refused = re.match(rf"performers train: error: {checkpoints}/step-000000(\d\d): cannot be", lines[0])
    assert refused, lines[0]
    path = out / "checkpoints" / f"step-000000{refused[1]}"
    assert lines[0].startswith(
        f"performers train: error: {path}: cannot be written (File too large): it needs about"
    )
    assert lines[1].startswith(
        f"performers train: error: rank 0 could not write {path} (File too large): it needs"
    )
    after = _complete_checkpoints(out / "checkpoints")
    assert before and all(after[name] == data for name, data in before.items())  # earlier ones intact
    assert not path.exists() and not list((out / "checkpoints").glob(".*"))  # no temporaries
    assert _steps(out)[-1] == int(refused[1])  # both stopped at the refused checkpoint's step
    assert _released(out)
