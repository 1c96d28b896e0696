"""What one process of a ``torch.distributed`` job does alone fails in every process alike
(:func:`performers.training.collectively`).

One two-process gloo job (tests/helpers/collective_workers.py) runs the cases in turn: rank 0's
writes refused for real (``RLIMIT_FSIZE`` in rank 0's process only) — a file, a metrics line, a
checkpoint, ``final/`` —, an error on rank 1, a run directory locked by another process. Every
process raises within the job's timeout (none is left waiting for the other): the failing one
its own error, naming the path and the bytes needed, the other the same refusal as
``rank 0 could not write PATH ...`` (or a :class:`RankFailedError` naming the rank and its
error); earlier files are intact and no temporary is left.
"""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from performers.training import RankFailedError, collectively, latest_checkpoint
from performers.utils import DirectoryLock, DiskWriteError
from tests.helpers import collective_workers as workers

TOO_LARGE = "(File too large): it needs about"


def _wait(context, deadline: float) -> None:
    """Until every process of ``context`` has ended; a process still there at ``deadline`` is
    one left waiting: the test fails (after killing them)."""
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail("the job did not end in time: a process was left waiting", pytrace=False)
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> tuple[Path, list[dict]]:
    """The job's output directory and, per rank, what each case returned or raised."""
    root = tmp_path_factory.mktemp("job")
    out = root / "out"
    report = root / "report"
    out.mkdir()
    workers.write_corpus(out / "corpus.fasta")
    with DirectoryLock(out / "locked"):  # (case "locked": held by this live process)
        context = mp.start_processes(
            workers.worker,
            args=(2, str(root / "store"), str(out), str(report)),
            nprocs=2,
            join=False,
            start_method="spawn",
        )
        try:
            _wait(context, time.monotonic() + 300)
        except mp.ProcessExitedException:
            failures = [p.read_text() for p in sorted(root.glob("report.*.failure"))]
            pytest.fail("a worker failed:\n" + "\n".join(failures), pytrace=False)
    return out, [json.loads(Path(f"{report}.{rank}.json").read_text()) for rank in range(2)]


def _released(run: Path) -> bool:
    return (run / ".lock").read_text() == ""  # no holder recorded


def _refused_on_rank_0(results: list[dict], case: str, path: Path) -> None:
    """Rank 0 raised its refused write of ``path``; rank 1 the same, as rank 0's."""
    zero, one = (r[case] for r in results)
    assert zero["raised"] == one["raised"] == "DiskWriteError", (zero, one)
    assert zero["message"].startswith(f"{path}: cannot be written {TOO_LARGE}"), zero
    assert one["message"].startswith(f"rank 0 could not write {path} {TOO_LARGE}"), one
    assert zero["writer"] is None and one["writer"] == "rank 0"
    assert "earlier files are intact" in one["message"]


@pytest.mark.slow  # a spawned 2-process gloo job (make test-slow)
def test_a_block_that_succeeds_everywhere_gives_every_process_the_largest_vote(job):
    _, results = job
    assert [r["vote"] for r in results] == [{"returned": 15}, {"returned": 15}]


@pytest.mark.slow  # a spawned 2-process gloo job (make test-slow)
def test_a_write_refused_on_rank_0_raises_in_both_naming_the_path_and_the_bytes(job):
    out, results = job
    path = out / "refused" / "report.bin"
    _refused_on_rank_0(results, "refused_write", path)
    assert "about 1,000 bytes" in results[1]["refused_write"]["message"]
    assert list(path.parent.iterdir()) == []  # no temporary file left


@pytest.mark.slow  # a spawned 2-process gloo job (make test-slow)
def test_an_error_on_another_rank_is_named_and_each_failing_rank_raises_its_own(job):
    _, (zero, one) = job
    assert one["rank_1_fails"] == {"raised": "ValueError", "message": "bad value on rank 1", "writer": None}
    assert zero["rank_1_fails"]["raised"] == "RankFailedError"
    assert zero["rank_1_fails"]["message"] == (
        "rank 1 failed (ValueError: bad value on rank 1); this process stops with it"
    )
    assert [r["both_fail"]["message"] for r in (zero, one)] == ['"rank 0\'s own"', '"rank 1\'s own"']
    # once_per_job: the others no longer wait for a rank 0 that failed to make the thing.
    assert zero["once_per_job"]["message"] == "malformed FASTA"
    assert one["once_per_job"]["message"] == (
        "rank 0 failed (ValueError: malformed FASTA); this process stops with it"
    )


@pytest.mark.slow  # a spawned 2-process gloo job (make test-slow)
def test_a_run_directory_locked_by_another_process_stops_both(job):
    _, (zero, one) = job
    assert zero["locked"]["raised"] == "DirectoryLockedError", zero["locked"]
    assert one["locked"]["raised"] == "RankFailedError"
    assert one["locked"]["message"].startswith("rank 0 failed (DirectoryLockedError: ")


@pytest.mark.slow  # a spawned 2-process gloo job (make test-slow)
def test_a_metrics_line_rank_0_cannot_write_stops_both_at_that_step(job):
    out, results = job
    run = out / "metrics"
    _refused_on_rank_0(results, "metrics_line", run / "metrics.jsonl")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]  # no torn line
    assert _released(run)


@pytest.mark.slow  # a spawned 2-process gloo job (make test-slow)
def test_a_checkpoint_rank_0_cannot_write_stops_both_and_the_earlier_one_is_intact(job):
    out, results = job
    run = out / "checkpoint"
    _refused_on_rank_0(results, "checkpoint", run / "checkpoints" / "step-00000004")
    before = json.loads((out / "checkpoints-before.json").read_text())
    assert before and workers.snapshot(run / "checkpoints") == before  # no temporaries either
    assert latest_checkpoint(run / "checkpoints").step == 2
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]  # the job stopped at 4
    assert _released(run)


@pytest.mark.slow  # a spawned 2-process gloo job (make test-slow)
def test_a_final_model_rank_0_cannot_write_stops_both(job):
    out, results = job
    run = out / "final-run"
    _refused_on_rank_0(results, "final", run / "final" / "model.safetensors")
    assert list((run / "final").iterdir()) == []  # no temporary, no config without weights
    assert latest_checkpoint(run / "checkpoints").step == 2
    assert _released(run)


def test_alone_the_block_is_just_the_block():
    with pytest.raises(ValueError, match=r"^mine$"), collectively():
        raise ValueError("mine")
    with collectively(vote=lambda: 10) as agreed:
        assert agreed.vote == 0  # (known on the way out)
    assert agreed.vote == 10


def test_the_errors_travel_whole_between_processes():
    refused = DiskWriteError("/x/step-00000004", 27, "File too large", 1000, 5, writer="rank 0")
    assert str(pickle.loads(pickle.dumps(refused))) == str(refused)
    assert str(refused).startswith("rank 0 could not write /x/step-00000004 (File too large): it needs")
    failed = RankFailedError(1, "ValueError", "bad")
    assert str(pickle.loads(pickle.dumps(failed))) == str(failed)
