"""Second derivatives through the collectives of context parallelism (all-reduce, all-gather,
the causal prefix exchange): their backward passes are differentiable when they run with
``create_graph=True``. Checked with ``gradgradcheck`` in float64 on a one-process gloo group
(the collectives run, as identities of one process; several processes: test_context_parallel)."""

import pytest
import torch
import torch.distributed as dist

from performers.distributed import favor_attention
from performers.ops import orthogonal_projection
from performers.ops.state import FavorState
from tests.helpers.numerics import generator

DT = torch.float64


@pytest.fixture
def one_process_group():
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("needs torch.distributed, not initialized yet")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _inputs():
    g = generator(0)
    q, k = ((0.7 * torch.randn(1, 1, 4, 3, generator=g, dtype=DT)).requires_grad_() for _ in range(2))
    v = torch.randn(1, 1, 4, 2, generator=g, dtype=DT, requires_grad=True)
    w = orthogonal_projection(4, 3, generator=generator(1), dtype=DT).requires_grad_()
    return q, k, v, w


@pytest.mark.usefixtures("one_process_group")
def test_bidirectional_all_reduce():
    def fn(q, k, v, w):
        return favor_attention(q, k, v, w, block_size=2)

    assert torch.autograd.gradgradcheck(fn, _inputs(), fast_mode=True)


@pytest.mark.usefixtures("one_process_group")
@pytest.mark.parametrize("kernel", ["softmax", "relu"])
def test_causal_prefix_exchange_with_states(kernel):
    q, k, v, w = _inputs()
    # A prefix of small keys: the keys here raise the offset of the returned state.
    _, previous = favor_attention(
        q.detach(), 0.2 * k.detach(), v.detach(), w.detach(), causal=True, kernel=kernel, return_state=True
    )
    kv, normalizer = previous.kv.requires_grad_(), previous.normalizer.requires_grad_()

    def fn(q, k, v, w, kv, normalizer):
        initial = FavorState(kv, normalizer, previous.log_offset, previous.kernel_params)
        out, state = favor_attention(
            q, k, v, w, causal=True, kernel=kernel, chunk_size=2, initial_state=initial, return_state=True
        )
        # The state itself (its tensors are differentiated at a fixed, detached offset).
        scale = torch.exp(state.log_offset)
        return out, state.kv * scale[..., None, None], state.normalizer * scale[..., None]

    assert torch.autograd.gradgradcheck(fn, (q, k, v, w, kv, normalizer), fast_mode=True)
