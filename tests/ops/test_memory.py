"""No tensor of L·M·D elements is ever created by the causal path, forward or backward."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from performers import favor_attention, orthogonal_projection


class LargestTensor(TorchDispatchMode):
    """Records the element count of every tensor any aten op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        self.ops += 1
        return out


def run_forward_backward(length, m, d, chunk, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, length, d, generator=g).to(dtype).requires_grad_() for _ in range(3))
    w = orthogonal_projection(m, d, generator=g)
    forward, backward = LargestTensor(), LargestTensor()
    with forward:
        out = favor_attention(q, k, v, w, causal=True, chunk_size=chunk)
        loss = out.square().sum()
    with backward:
        loss.backward()
    assert q.grad is not None and k.grad is not None and v.grad is not None
    return forward, backward


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_causal_never_builds_an_l_m_d_tensor(dtype):
    length, m, d, chunk = 16384, 256, 64, 64
    forward, backward = run_forward_backward(length, m, d, chunk, dtype)
    assert forward.ops > 0 and backward.ops > 0  # the watcher saw both passes
    # Largest legitimate tensors: features L·M and chunk states (L/C)·M·(D+1), both ≤ L·M·D/C·(1+1/D).
    allowed = length * m * (d + 1) // chunk
    assert forward.largest <= allowed, forward.largest
    assert backward.largest <= allowed, backward.largest
    assert max(forward.largest, backward.largest) * 32 < length * m * d


def test_watcher_catches_a_quadratic_memory_implementation():
    # Negative control: the textbook prefix sum of outer products builds (L, M, D).
    length, m, d = 128, 16, 8
    kf, v = torch.rand(1, 1, length, m), torch.randn(1, 1, length, d)
    watcher = LargestTensor()
    with watcher:
        torch.cumsum(kf.unsqueeze(-1) * v.unsqueeze(-2), dim=2)
    assert watcher.largest >= length * m * d
