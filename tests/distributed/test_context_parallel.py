"""Context-parallel FAVOR attention (performers.distributed) against the single-process op.

Each test spawns 2 or 4 processes (gloo on CPU, torch.multiprocessing) that hold contiguous
shards of one sequence; the cases themselves live in tests/helpers/context_parallel_workers.py.
"""

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.helpers import context_parallel_workers as workers


def run(world: int, lengths: list[int], cases: list[str], tmp_path: Path) -> None:
    assert len(lengths) == world
    report = str(tmp_path / "failure")
    try:
        mp.spawn(
            workers.worker,
            args=(world, str(tmp_path / "store"), lengths, cases, report),
            nprocs=world,
            join=True,
        )
    except mp.ProcessExitedException:
        messages = [p.read_text() for p in sorted(tmp_path.glob("failure.*"))]
        pytest.fail("a worker failed:\n" + "\n".join(messages), pytrace=False)


ALL = sorted(workers.CASES)


def test_two_processes_with_a_one_token_shard(tmp_path):
    run(2, [12, 1], ALL, tmp_path)


# Multi-process (make test-slow, which CI runs): make test stays within its 10 minutes.
@pytest.mark.slow
def test_four_processes_with_unequal_shards(tmp_path):
    run(4, [5, 1, 4, 3], ALL, tmp_path)


def test_needs_an_initialized_process_group():
    q = torch.randn(1, 1, 4, 2)
    with pytest.raises(RuntimeError, match=r"needs torch.distributed to be initialized"):
        workers.favor_attention(q, q, q, torch.randn(3, 2))


def _spawn_training(world: int, context: int, tmp_path: Path) -> dict:
    report = str(tmp_path / "failure")
    try:
        mp.spawn(
            workers.train_worker,
            args=(world, str(tmp_path / "store"), str(tmp_path / "runs"), context, report),
            nprocs=world,
            join=True,
        )
    except mp.ProcessExitedException:
        messages = [p.read_text() for p in sorted(tmp_path.glob("failure.*"))]
        pytest.fail("a worker failed:\n" + "\n".join(messages), pytrace=False)
    return torch.load(tmp_path / "runs" / "parameters.pt")


# Four processes (data 2 × context 2) in make test-slow, which CI runs.
@pytest.mark.parametrize(
    "world,context",
    [(2, 2), pytest.param(4, 2, marks=pytest.mark.slow)],
    ids=["context-2", "data-2-x-context-2"],
)
def test_context_parallel_training_equals_one_process(tmp_path, world, context):
    """Masked and causal LMs, padded crops and full windows, learned and rotary positions: the
    parameters after 6 steps (with two redraws) equal one process on the same global batches,
    and a run stopped at step 3 and resumed ends bit for bit where the uninterrupted one does."""
    got = _spawn_training(world, context, tmp_path)
    torch.set_num_threads(1)
    for task, position, concatenate in workers.TRAINING_RUNS:
        name = f"{task}-{position}-{'windows' if concatenate else 'crops'}"
        expected = workers.train_tiny(
            tmp_path / "single" / name, task, 1, position=position, concatenate=concatenate
        )
        for key in expected:
            torch.testing.assert_close(
                got[name][key], expected[key], rtol=1e-5, atol=1e-6, msg=f"{name} {key}"
            )
