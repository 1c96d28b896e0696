"""The software and hardware a measurement ran on, recorded next to its numbers."""

from __future__ import annotations

import os
import platform

import torch

__all__ = ["environment"]


def environment() -> dict:
    """torch and Python versions, machine, processor, CPU count and torch threads."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
