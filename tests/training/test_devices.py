"""Choosing where a run computes, and batches following the model to its device
(performers.training.devices); the GPU runs themselves are the ``cuda`` tests of
tests/training/test_trainer.py."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from performers.training import evaluate_tokens, model_device, resolve_device, to_device


def test_auto_is_the_cpu_without_cuda_and_names_are_checked():
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda" and resolve_device(None).index is not None
    else:
        assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
        with pytest.raises(ValueError, match=r"device 'cuda': this machine has no CUDA device"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"device must be a torch device.*got 'gpu0'"):
        resolve_device("gpu0")


def test_to_device_moves_tensors_only_and_model_device_reads_the_parameters():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "name": "x"}
    moved = to_device(batch, torch.device("cpu"))
    assert moved["name"] == "x" and torch.equal(moved["input_ids"], batch["input_ids"])
    assert model_device(nn.Linear(2, 2).to(torch.float64)) == torch.device("cpu")
    assert model_device(nn.ReLU()) == torch.device("cpu")  # no parameters: the CPU
    meta = nn.Linear(2, 2, device="meta")
    assert model_device(meta) == torch.device("meta")


def test_evaluation_brings_each_batch_to_the_model():
    seen = []

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(4, device="meta"))

        def forward(self, input_ids, attention_mask):
            seen.append((input_ids.device, attention_mask.device))
            raise StopIteration  # meta tensors: enough to see where the batch went

    batch = {"input_ids": torch.ones(1, 3, dtype=torch.long), "attention_mask": torch.ones(1, 3)}
    with pytest.raises(StopIteration):
        evaluate_tokens(Recorder(), [batch | {"labels": torch.ones(1, 3, dtype=torch.long)}], causal=False)
    assert seen == [(torch.device("meta"), torch.device("meta"))]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("command", ["train", "finetune"])
def test_training_commands_refuse_a_cuda_device_this_machine_lacks(tmp_path, command):
    arguments = [command, "--device", "cuda", "--steps", "1", "--out", str(tmp_path)]
    result = subprocess.run([sys.executable, "-m", "performers", *arguments], capture_output=True, text=True)
    assert result.returncode != 0
    expected = f"performers {command}: error: --device: device 'cuda': this machine has no CUDA device"
    assert expected in result.stderr


def test_a_failed_block_frees_its_frames_before_the_process_group_is_left(tmp_path, monkeypatch):
    """What a failed job's frames hold (in a real job, the DDP wrapper whose reducer holds the
    group) is freed before ``destroy_process_group``: left to the traceback, it would be freed
    after, as the group's last holder, with the GIL held — a deadlock with gloo's threads."""
    import weakref

    import torch.distributed as dist

    from performers.training import process_group

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    monkeypatch.setenv("WORLD_SIZE", "2")  # a torchrun job's process (its group joined above)
    alive_when_leaving, real_destroy = [], dist.destroy_process_group

    def destroy_process_group():
        alive_when_leaving.append(held() is not None)
        real_destroy()

    monkeypatch.setattr(dist, "destroy_process_group", destroy_process_group)

    class Wrapper:  # (stands for DistributedDataParallel)
        pass

    def job():
        nonlocal held
        wrapper = Wrapper()
        held = weakref.ref(wrapper)
        raise ValueError("rank 0 could not write")

    held = None
    with pytest.raises(ValueError, match="could not write"):
        with process_group(torch.device("cpu")):
            job()
    assert alive_when_leaving == [False] and not dist.is_initialized()


def test_the_trainer_builds_ddp_without_a_deprecation_warning(tmp_path):
    """Every process of a torchrun job wraps its model in DDP: the option that keeps buffers out
    of each forward is spelled as this torch wants it (no warning on every rank's stderr)."""
    import warnings

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from performers.training.trainer import _no_buffer_broadcast_in_forward

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model = nn.Linear(2, 2)
            model.register_buffer("projection", torch.ones(2))
            wrapped = DistributedDataParallel(model, **_no_buffer_broadcast_in_forward())
            wrapped(torch.ones(1, 2)).sum().backward()
        # Freed while the group lives: DDP's reducer must not be the group's last holder
        # (see process_group; otherwise this test can hang as the job did).
        del wrapped
    finally:
        dist.destroy_process_group()
