"""The few-op decoding step of the exponential kernels (ops.causal.recurrent.exp_attention_step):
equal to the generic step (features, then causal_linear_attention_step), in place or not."""

import pytest
import torch

from performers import favor_attention, favor_attention_step, orthogonal_projection
from performers.ops.causal.recurrent import causal_linear_attention_step, exp_attention_step
from performers.ops.generic_features import attention_features
from performers.ops.kernels import get_kernel


def _inputs(seed=0, length=12):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, length, 16, generator=g, dtype=torch.float64) for _ in range(3))
    return q, k, v, orthogonal_projection(32, 16, generator=g).double()


def _generic_step(q, k, v, state, w, kernel, scale):
    kern = get_kernel(kernel)
    qf, kf, offsets, _ = attention_features(
        kern, q, k, w, scale, causal=True, key_padding_mask=None,
        initial_offset=None if state is None else state.log_offset, params=None,
    )  # fmt: skip
    out, new = causal_linear_attention_step(
        qf[:, :, 0], kf[:, :, 0], v[:, :, 0], state, key_log_offset=offsets[..., 0]
    )
    return out.unsqueeze(2), new


@pytest.mark.parametrize("kernel", ["softmax", "softmax-hyperbolic", "gaussian", "gaussian-hyperbolic"])
def test_exp_step_equals_the_generic_step_from_no_state_and_from_a_prefix(kernel):
    q, k, v, w = _inputs()
    scale = 16**-0.25
    form = get_kernel(kernel).exp_form(w)
    _, state = favor_attention(
        q[:, :, :8], k[:, :, :8], v[:, :, :8], w, kernel=kernel, causal=True, return_state=True
    )
    for start in (None, state):
        t = slice(8, 9)
        out, new = exp_attention_step(q[:, :, t], k[:, :, t], v[:, :, t], start, form, scale=scale)
        ref, ref_new = _generic_step(q[:, :, t], k[:, :, t], v[:, :, t], start, w, kernel, scale)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        for a, b in zip(new[:3], ref_new[:3], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_in_place_steps_update_the_state_tensors_and_match_out_of_place_and_parallel():
    q, k, v, w = _inputs(length=20)
    full = favor_attention(q, k, v, w, causal=True)
    _, state = favor_attention(q[:, :, :10], k[:, :, :10], v[:, :, :10], w, causal=True, return_state=True)
    copy = type(state)(*(t.clone() for t in state[:3]), None)
    kv_storage = state.kv.data_ptr()
    outs, outs_copy = [], []
    with torch.no_grad():
        for t in range(10, 20):
            one = slice(t, t + 1)
            out, state = favor_attention_step(
                q[:, :, one], k[:, :, one], v[:, :, one], state, w, inplace=True, check_inputs=False
            )
            out_copy, copy = favor_attention_step(q[:, :, one], k[:, :, one], v[:, :, one], copy, w)
            outs.append(out)
            outs_copy.append(out_copy)
    assert state.kv.data_ptr() == kv_storage  # the same tensor, updated in place
    torch.testing.assert_close(torch.cat(outs, 2), torch.cat(outs_copy, 2), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(torch.cat(outs, 2), full[:, :, 10:], rtol=1e-12, atol=1e-12)


def test_in_place_is_out_of_place_under_autograd():
    q, k, v, w = _inputs()
    _, state = favor_attention(q[:, :, :8], k[:, :, :8], v[:, :, :8], w, causal=True, return_state=True)
    before = state.kv.clone()
    v_step = v[:, :, 8:9].clone().requires_grad_()
    out, new = favor_attention_step(q[:, :, 8:9], k[:, :, 8:9], v_step, state, w, inplace=True)
    assert torch.equal(state.kv, before) and new.kv.data_ptr() != state.kv.data_ptr()
    out.sum().backward()
    assert v_step.grad is not None and torch.isfinite(v_step.grad).all()
