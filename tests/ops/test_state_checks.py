"""A causal state is checked against the inputs it continues, at favor_attention_step and at
initial_state= (favor_attention, linear_attention): every mismatch raises, naming both shapes."""

import copy
import pickle

import pytest
import torch

from performers.ops import (
    FavorState,
    favor_attention,
    favor_attention_step,
    linear_attention,
    orthogonal_projection,
)
from tests.helpers.numerics import generator

DT = torch.float64
B, H, L, D, DV, M = 2, 2, 5, 4, 3, 8


def _inputs(b=B, h=H, dv=DV, length=L, dtype=DT, seed=0):
    g = generator(seed)
    q, k = (0.5 * torch.randn(b, h, length, D, generator=g, dtype=dtype) for _ in range(2))
    return q, k, torch.randn(b, h, length, dv, generator=g, dtype=dtype)


W = orthogonal_projection(M, D, generator=generator(1), dtype=DT)
W4 = orthogonal_projection(4, D, generator=generator(2), dtype=DT)


def _state(kernel="softmax", projection=W):
    q, k, v = _inputs(seed=3)
    return favor_attention(q, k, v, projection, kernel=kernel, is_causal=True, return_state=True)[1]


def _continue(where, state, q, k, v, projection=W, kernel="softmax"):
    """The output of continuing ``state`` with these inputs, one step or a parallel call."""
    if where == "step":
        return favor_attention_step(q[:, :, :1], k[:, :, :1], v[:, :, :1], state, projection, kernel=kernel)[
            0
        ]
    return favor_attention(q, k, v, projection, kernel=kernel, is_causal=True, initial_state=state)


NAME = {"step": "state", "initial_state": "initial_state"}

# (case, the inputs' change, the message): the state is (2, 2, 8, 3) softmax float64 on the CPU.
CASES = {
    "batch": (
        dict(q_kv=dict(b=1)),
        r"\.kv has shape \(2, 2, 8, 3\), but q \(1, 2, \d, 4\).* need .* = \(1, 2, 8, 3\)",
    ),
    "heads": (dict(q_kv=dict(h=3)), r"\.kv has shape \(2, 2, 8, 3\), but q \(2, 3, .* = \(2, 3, 8, 3\)"),
    "M": (
        dict(projection=W4),
        r"\.kv has shape \(2, 2, 8, 3\), but .*projection \(4, 4\).* = \(2, 2, 4, 3\)",
    ),
    "Dv": (
        dict(q_kv=dict(dv=5)),
        r"\.kv has shape \(2, 2, 8, 3\), but q .*v \(2, 2, \d, 5\).* = \(2, 2, 8, 5\)",
    ),
    "kernel": (dict(kernel="relu"), r" was built by kernel 'softmax', but this call uses kernel 'relu'"),
    "kernel of the same width": (
        dict(kernel="softmax-hyperbolic", projection=W4),  # M' = 2·4 = 8, as the state's
        r" was built by kernel 'softmax', but this call uses kernel 'softmax-hyperbolic'",
    ),
    "dtype": (
        dict(q_kv=dict(dtype=torch.float32), projection=W.float()),
        r"\.kv is torch.float64, but this call keeps its state in torch.float32",
    ),
}


@pytest.mark.parametrize("where", ["step", "initial_state"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_mismatched_state_is_refused_naming_both(where, case):
    change, pattern = CASES[case]
    q, k, v = _inputs(**change.get("q_kv", {}))
    error = TypeError if case == "dtype" else ValueError
    with pytest.raises(error, match=NAME[where] + pattern):
        _continue(where, _state(), q, k, v, change.get("projection", W), change.get("kernel", "softmax"))


@pytest.mark.parametrize("where", ["step", "initial_state"])
def test_hyperbolic_states_are_2m_wide(where):
    state = _state("softmax-hyperbolic", W4)
    assert state.kv.shape == (B, H, 8, DV) and state.kernel == "softmax-hyperbolic"
    q, k, v = _inputs()
    _continue(where, state, q, k, v, W4, "softmax-hyperbolic")  # M' = 2M continues
    with pytest.raises(
        ValueError, match=r"projection \(8, 4\) and kernel 'softmax-hyperbolic' need .* \(2, 2, 16, 3\)"
    ):
        _continue(where, state, q, k, v, W, "softmax-hyperbolic")


@pytest.mark.parametrize("where", ["step", "initial_state"])
def test_device_and_type_and_kernel_params(where):
    q, k, v = _inputs()
    state = _state()
    meta = FavorState(*(t.to("meta") if isinstance(t, torch.Tensor) else t for t in state))
    with pytest.raises(ValueError, match=NAME[where] + r"\.kv is on device meta but q is on cpu"):
        _continue(where, meta, q, k, v)
    with pytest.raises(TypeError, match=NAME[where] + " must be a FavorState"):
        _continue(where, tuple(state), q, k, v)
    # A FAVOR++ state recording no kernel still carries its A: refused by another kernel.
    plus = _state("favor++")._replace(kernel=None)
    with pytest.raises(
        ValueError, match=NAME[where] + r" carries kernel_params .* kernel 'softmax' has none"
    ):
        _continue(where, plus, q, k, v)


@pytest.mark.parametrize("where", ["step", "initial_state"])
def test_a_matching_state_continues_and_old_constructions_still_work(where):
    q, k, v = _inputs()
    state = _state()
    expected = _continue(where, state, q, k, v)
    # A state built by hand with the four original fields records no kernel and is accepted.
    old = FavorState(state.kv, state.normalizer, state.log_offset)
    assert old.kernel is None
    torch.testing.assert_close(_continue(where, old, q, k, v), expected, rtol=0, atol=0)
    # The kernel survives copies and pickling (checkpoints, caches).
    assert pickle.loads(pickle.dumps(state)).kernel == copy.deepcopy(state).kernel == "softmax"


def test_step_and_prefill_record_the_kernel():
    q, k, v = _inputs()
    _, state = favor_attention_step(q[:, :, :1], k[:, :, :1], v[:, :, :1], None, None, kernel="relu")
    assert state.kernel == "relu"
    _, state = favor_attention(q[:, :, :0], k[:, :, :0], v[:, :, :0], W, is_causal=True, return_state=True)
    assert state.kernel == "softmax"


def test_linear_attention_checks_its_state():
    q, k, v = _inputs()
    qf, kf = q.exp(), k.exp()  # features of width D = 4
    _, state = linear_attention(qf, kf, v, is_causal=True, return_state=True)
    assert state.kv.shape == (B, H, D, DV) and state.kernel is None
    linear_attention(qf, kf, v, is_causal=True, initial_state=state)
    with pytest.raises(
        ValueError, match=r"initial_state\.kv has shape \(2, 2, 4, 3\), but q_features \(1, 2, 5, 4\)"
    ):
        linear_attention(qf[:1], kf[:1], v[:1], is_causal=True, initial_state=state)
    with pytest.raises(TypeError, match=r"initial_state\.kv is torch.float64, but .* torch.float32"):
        linear_attention(qf.float(), kf.float(), v.float(), is_causal=True, initial_state=state)


def test_check_inputs_false_skips_the_state_check():
    # A decoding loop that checked its inputs once: no per-token check (the layers' step).
    q, k, v = _inputs()
    out, _ = favor_attention_step(q[:, :, :1], k[:, :, :1], v[:, :, :1], _state(), W, check_inputs=False)
    assert out.shape == (B, H, 1, DV)
