"""The Triton kernels (performers.ops.triton) against the naive quadratic reference and the
PyTorch paths: on CPU through the Triton interpreter (conftest sets TRITON_INTERPRET=1 when no
GPU is present), on CUDA when one is (the tests marked ``cuda``).

Tolerances: float64 results are compared at 1e-10 (a few hundred ulps: every kernel sums
O(L·M) terms of size <= 1) — in float32 at n·u (``TOL``) where a GPU's triton cannot compile
float64 products (FLOAT64); float32 at 2e-5 relative to the output scale (unit-scale inputs,
M <= 64 terms per dot); float16/bfloat16 outputs at 2 ulps of the output dtype (both sides
round a float32-accumulated result once).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from performers import favor_attention, favor_attention_step, orthogonal_projection
from performers.ops.kernels import get_kernel
from performers.ops.naive import naive_favor_attention

pytest.importorskip("triton")

from performers.ops.triton import FLOAT64_TRITON, triton_version
from performers.ops.triton.bidirectional import triton_bidirectional_attention
from performers.ops.triton.causal import triton_causal_attention
from performers.ops.triton.launch import Blocks
from performers.ops.triton.paths import SHARED_KIB, float64_reason, shared_memory_reason

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEVICE = "cpu" if INTERPRETED else "cuda"
# Compiled float64 products need triton >= 3.9; with an older one (a GPU machine's torch may pin
# it) the reference comparisons run in float32, at float32's tolerance.
FLOAT64 = INTERPRETED or (triton_version() or (0, 0)) >= FLOAT64_TRITON
DTYPE = torch.float64 if FLOAT64 else torch.float32
# float32: these tests' sums have at most 64·64 terms of unit scale (L, M, B·H·L ≤ 64), and a
# float32 sum of n terms errs by at most n·u relative (u = 2⁻²⁴): 2.4e-4.
TOL = 1e-10 if FLOAT64 else 64 * 64 * 2.0**-24
pytestmark = [
    pytest.mark.cuda,  # on a GPU every test here runs on CUDA tensors
    pytest.mark.skipif(
        not INTERPRETED and not torch.cuda.is_available(), reason="needs CUDA or TRITON_INTERPRET=1"
    ),
]
EXP_KERNELS = ["softmax", "softmax-hyperbolic", "gaussian", "gaussian-hyperbolic"]
SMALL = Blocks(16, 16, span=32)  # several tiles along positions and features, and split sums


def _inputs(b, h, lq, lk, d, m, dv=None, *, dtype=DTYPE, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=g, dtype=dtype)
    k = torch.randn(b, h, lk, d, generator=g, dtype=dtype)
    v = torch.randn(b, h, lk, dv or d, generator=g, dtype=dtype)
    w = orthogonal_projection(m, d, generator=g).to(dtype)
    return [t.to(DEVICE).requires_grad_() for t in (q, k, v, w)]


def _grads(out, inputs, seed=1):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype).to(out.device)
    return torch.autograd.grad((out * g).sum(), inputs, allow_unused=True)


def _assert_close(actual, expected, tol):
    tol = tol if FLOAT64 else max(tol, TOL)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "kernel, shape",
    [
        ("softmax", (2, 2, 37, 29, 16, 24)),  # L not a multiple of the tile, Lq != Lk
        ("softmax-hyperbolic", (1, 2, 20, 20, 16, 16)),
        ("gaussian", (1, 1, 33, 40, 64, 16)),  # D = 64
        ("gaussian-hyperbolic", (1, 1, 18, 18, 16, 32)),
    ],
)
def test_bidirectional_matches_naive_outputs_and_gradients(kernel, shape):
    b, h, lq, lk, d, m = shape
    q, k, v, w = _inputs(b, h, lq, lk, d, m, dv=8)
    pad = torch.zeros(b, lk, dtype=torch.bool, device=DEVICE)
    pad[-1, -5:] = True
    form = get_kernel(kernel).exp_form(w)
    out = triton_bidirectional_attention(
        q, k, v, form.rows, scale=d**-0.25, norm=form.norm, key_padding_mask=pad, blocks=SMALL
    )
    ref = naive_favor_attention(q, k, v, w, kernel=kernel, key_padding_mask=pad)
    _assert_close([out, *_grads(out, [q, k, v, w])], [ref, *_grads(ref, [q, k, v, w])], 1e-10)


def test_bidirectional_row_whose_keys_are_all_padded_is_zero_with_finite_gradients():
    q, k, v, w = _inputs(2, 2, 20, 37, 16, 24, dv=8)
    pad = torch.zeros(2, 37, dtype=torch.bool, device=DEVICE)
    pad[0, :] = True  # every feature of this row's keys is empty (its per-feature maxima: -inf)
    pad[1, 3:9] = True
    form = get_kernel("softmax").exp_form(w)
    out = triton_bidirectional_attention(
        q, k, v, form.rows, scale=16**-0.25, norm=form.norm, key_padding_mask=pad, blocks=SMALL
    )
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    ref = naive_favor_attention(q, k, v, w, key_padding_mask=pad)
    grads, ref_grads = _grads(out, [q, k, v, w]), _grads(ref, [q, k, v, w])
    assert all(torch.isfinite(g).all() for g in grads)
    _assert_close([out[1], *grads], [ref[1], *ref_grads], 1e-10)


@pytest.mark.parametrize("causal", [False, True])
def test_maxima_found_while_tiles_stream_match_when_they_keep_growing(causal):
    """The key summary finds each feature's maximum, and the readout each query's row maximum,
    while the tiles stream, rescaling the partial sums whenever they grow. Keys that grow along
    the sequence (tile to tile, split to split) and features that grow along the projection
    make every rescale fire with factors far from 1; outputs and gradients still match."""
    b, h, length, d, m = 1, 2, 70, 16, 48
    q, k, v, w = _inputs(b, h, length, length, d, m, dv=8)
    with torch.no_grad():
        along_positions = torch.linspace(0.3, 2.0, length, dtype=DTYPE, device=DEVICE)[:, None]
        k.mul_(along_positions)
        w.mul_(torch.linspace(0.3, 2.0, m, dtype=DTYPE, device=DEVICE)[:, None])
    form = get_kernel("softmax").exp_form(w)
    scale = d**-0.25
    with torch.no_grad():  # the inputs span many e-folds: the rescaling factors are far from 1
        logs = (k * scale) @ (form.rows * scale).T
        assert (logs.amax(2) - logs[..., : SMALL.rows, :].amax(2)).amax() > 5  # tile to tile
        assert (logs.amax(2) - logs[..., : SMALL.span, :].amax(2)).amax() > 5  # split to split
        query_logs = (q * scale) @ (form.rows * scale).T
        assert (query_logs.amax(-1) - query_logs[..., : SMALL.features].amax(-1)).amax() > 5
    # Leading padding: a whole first tile and split that see no key (maxima still −inf).
    pad = torch.zeros(b, length, dtype=torch.bool, device=DEVICE)
    pad[0, : SMALL.span + 5] = True
    run = dict(scale=scale, norm=form.norm, key_padding_mask=pad, blocks=SMALL)
    if causal:
        out, *_ = triton_causal_attention(q, k, v, form.rows, **run)
    else:
        out = triton_bidirectional_attention(q, k, v, form.rows, **run)
    ref = naive_favor_attention(q, k, v, w, causal=causal, key_padding_mask=pad)
    _assert_close([out, *_grads(out, [q, k, v, w])], [ref, *_grads(ref, [q, k, v, w])], 1e-10)


@pytest.mark.parametrize(
    "kernel, length, d, m",
    [
        ("softmax", 37, 16, 24),
        ("softmax-hyperbolic", 21, 16, 16),
        ("gaussian", 33, 64, 64),
        ("softmax", 1, 16, 16),
    ],
)
def test_causal_matches_naive_outputs_and_gradients(kernel, length, d, m):
    q, k, v, w = _inputs(2, 2, length, length, d, m, dv=8)
    pad = torch.zeros(2, length, dtype=torch.bool, device=DEVICE)
    if length > 12:
        pad[1, :5] = True  # leading padding: positions that have seen no key yet
        pad[0, 10:12] = True
    form = get_kernel(kernel).exp_form(w)
    out, *_ = triton_causal_attention(
        q, k, v, form.rows, scale=d**-0.25, norm=form.norm, key_padding_mask=pad, blocks=SMALL
    )
    ref = naive_favor_attention(q, k, v, w, kernel=kernel, key_padding_mask=pad, causal=True)
    _assert_close([out, *_grads(out, [q, k, v, w])], [ref, *_grads(ref, [q, k, v, w])], 1e-10)


@pytest.mark.parametrize(
    "kernel, projected, causal",
    [
        ("relu", True, False),
        ("elu", True, True),
        ("abs", False, True),
        ("exp", True, False),
        ("relu", False, True),
    ],
)
def test_generalized_kernels_match_naive_outputs_and_gradients(kernel, projected, causal):
    q, k, v, w = _inputs(2, 2, 21, 21, 16, 24, dv=8)
    pad = torch.zeros(2, 21, dtype=torch.bool, device=DEVICE)
    pad[1, :3] = True
    w = w if projected else None
    out = favor_attention(q, k, v, w, kernel=kernel, causal=causal, key_padding_mask=pad, backend="triton")
    ref = naive_favor_attention(q, k, v, w, kernel=kernel, key_padding_mask=pad, causal=causal)
    inputs = [q, k, v] + ([w] if projected else [])
    _assert_close([out, *_grads(out, inputs)], [ref, *_grads(ref, inputs)], 1e-10)


def test_generalized_kernel_states_and_steps_match_the_torch_path():
    q, k, v, w = (t.detach() for t in _inputs(1, 2, 30, 30, 16, 16))
    runs = {}
    elu = dict(kernel="elu")
    for backend in ("torch", "triton"):
        head, rest, tail = (slice(0, 20), slice(20, 25), range(25, 30))
        _, state = favor_attention(
            q[:, :, head],
            k[:, :, head],
            v[:, :, head],
            w,
            **elu,
            causal=True,
            return_state=True,
            backend="torch",
        )
        out, state = favor_attention(
            q[:, :, rest], k[:, :, rest], v[:, :, rest], w, **elu,
            causal=True, initial_state=state, return_state=True, backend=backend,
        )  # fmt: skip
        outputs = [out]
        for t in tail:
            one = slice(t, t + 1)
            step, state = favor_attention_step(
                q[:, :, one], k[:, :, one], v[:, :, one], state, w, **elu, backend=backend
            )
            outputs.append(step)
        runs[backend] = torch.cat(outputs, dim=2), state
    out, state = runs["triton"]
    ref_out, ref_state = runs["torch"]
    # From no state, as the first position.
    first, _ = favor_attention_step(
        q[:, :, :1], k[:, :, :1], v[:, :, :1], None, w, kernel="relu", backend="triton"
    )
    torch.testing.assert_close(first, v[:, :, :1], rtol=TOL, atol=TOL)
    torch.testing.assert_close(out, ref_out, rtol=TOL, atol=TOL)
    torch.testing.assert_close(out, naive_favor_attention(q, k, v, w, kernel="elu", causal=True)[:, :, 20:])
    # The same sums in the same units (the PyTorch path reports no offset for these kernels).
    scale = torch.exp(ref_state.log_offset - state.log_offset)[..., None]
    torch.testing.assert_close(state.normalizer, ref_state.normalizer * scale, rtol=TOL, atol=TOL)


def test_backend_triton_equals_torch_in_float32():
    q, k, v, w = (t.detach().float() for t in _inputs(1, 2, 100, 100, 64, 64))
    pad = torch.zeros(1, 100, dtype=torch.bool, device=DEVICE)
    pad[0, -7:] = True
    for causal in (False, True):
        out = favor_attention(q, k, v, w, causal=causal, key_padding_mask=pad, backend="triton")
        ref = favor_attention(q, k, v, w, causal=causal, key_padding_mask=pad, backend="torch")
        torch.testing.assert_close(out, ref, rtol=0, atol=2e-5 * ref.abs().max().item())


@pytest.fixture
def tf32_matmuls():
    """PyTorch's float32 matmuls allowed to use TF32 for the test (as users say it)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    yield
    torch.set_float32_matmul_precision(before)


def test_float32_products_follow_pytorchs_tf32_setting(tf32_matmuls):
    from performers.ops.triton.launch import compute_types

    assert compute_types(torch.float32, tf32=False)["LOW"] is False
    assert compute_types(torch.float32) == compute_types(torch.float32, tf32=True)
    assert compute_types(torch.float32)["LOW"] is True
    # The precision API of torch >= 2.9 (in a fresh process: torch refuses to read the legacy
    # flag once it is used, for the rest of the process).
    script = (
        "import torch\n"
        "from performers.ops.triton.launch import tf32_matmuls\n"
        "assert not tf32_matmuls()\n"
        "torch.backends.cuda.matmul.fp32_precision = 'tf32'\n"
        "assert tf32_matmuls()\n"
        "torch.backends.cuda.matmul.fp32_precision = 'ieee'\n"
        "assert not tf32_matmuls()\n"
        "torch.backends.cuda.matmul.fp32_precision = 'none'\n"
        "torch.backends.fp32_precision = 'tf32'\n"
        "assert tf32_matmuls()\n"
    )
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    # TF32 rounds both operands of a product to 10 mantissa bits (u = 2⁻¹¹): a log-feature x·p
    # moves by at most 2u·Σ|x_i p_i|, so an attention weight by a factor within exp(±2(Δq + Δk)),
    # and the weighted values by 2u more (on CPU the interpreter multiplies in float32).
    q, k, v, w = (t.detach().float() for t in _inputs(1, 2, 50, 50, 16, 32))
    u = 2.0**-11
    rows = get_kernel("softmax").exp_form(w).rows * q.shape[-1] ** -0.25
    delta = sum(2 * u * (x.abs() @ rows.abs().T).max().item() for x in (q, k))
    bound = (math.exp(2 * delta) - 1 + 2 * u) * v.abs().max().item()
    for causal in (False, True):
        out = favor_attention(q, k, v, w, causal=causal, backend="triton")
        ref = favor_attention(*(t.double() for t in (q, k, v, w)), causal=causal, backend="torch")
        torch.testing.assert_close(out.double(), ref, rtol=0, atol=bound)


def test_causal_continues_a_state_and_returns_one_with_gradients_through_both():
    q, k, v, w = _inputs(1, 2, 40, 40, 16, 16, dv=8)
    cut = 23

    def run(backend):
        prefix, state = favor_attention(
            q[:, :, :cut], k[:, :, :cut], v[:, :, :cut], w, causal=True, return_state=True, backend="torch"
        )
        rest, final = favor_attention(
            q[:, :, cut:], k[:, :, cut:], v[:, :, cut:], w,
            causal=True, initial_state=state, return_state=True, backend=backend,
        )  # fmt: skip
        return torch.cat([prefix, rest], dim=2), final

    out, final = run("triton")
    ref_out, ref_final = run("torch")
    naive = naive_favor_attention(q, k, v, w, causal=True)
    torch.testing.assert_close(out, naive, rtol=TOL, atol=TOL)
    # The same state as the PyTorch path, in the same units.
    _assert_close(final[:3], ref_final[:3], 1e-10)
    g = torch.Generator().manual_seed(3)
    weights = [
        torch.randn(t.shape, generator=g, dtype=t.dtype).to(DEVICE) for t in (out, final.kv, final.normalizer)
    ]

    def loss(o, s):
        return (o * weights[0]).sum() + (s.kv * weights[1]).sum() + (s.normalizer * weights[2]).sum()

    grads = torch.autograd.grad(loss(out, final), [q, k, v, w])
    ref_grads = torch.autograd.grad(loss(ref_out, ref_final), [q, k, v, w])
    _assert_close(grads, ref_grads, 1e-10)


def test_decoding_after_a_triton_prefill_equals_the_parallel_output():
    q, k, v, w = (t.detach().float() for t in _inputs(2, 2, 24, 24, 16, 32))
    full = favor_attention(q, k, v, w, causal=True, backend="torch")
    _, state = favor_attention(
        q[:, :, :16], k[:, :, :16], v[:, :, :16], w, causal=True, return_state=True, backend="triton"
    )
    steps = []
    for t in range(16, 24):
        out, state = favor_attention_step(
            q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], state, w, backend="triton"
        )
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, dim=2), full[:, :, 16:], rtol=0, atol=2e-5)
    # From no state, one step is the first position.
    first, state = favor_attention_step(q[:, :, :1], k[:, :, :1], v[:, :, :1], None, w, backend="triton")
    ref_first, ref_state = favor_attention_step(
        q[:, :, :1], k[:, :, :1], v[:, :, :1], None, w, backend="torch"
    )
    torch.testing.assert_close(first, ref_first, rtol=0, atol=2e-5)
    _assert_close(state[:3], ref_state[:3], 2e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_round_like_the_torch_path(dtype):
    from performers.ops.triton.launch import compute_types

    q, k, v, w = (t.detach().float() for t in _inputs(1, 2, 50, 50, 64, 64))
    q, k, v = (t.to(dtype) for t in (q, k, v))
    for causal in (False, True):
        out = favor_attention(q, k, v, w, causal=causal, backend="triton")
        # The float32 computation on the same (rounded) inputs, rounded once.
        ref = favor_attention(q.float(), k.float(), v.float(), w, causal=causal, backend="torch")
        assert out.dtype == dtype
        ulp = torch.finfo(dtype).eps * ref.abs().max().item()
        # Within 2 ulps of it, or within twice the PyTorch paths' own error on these inputs
        # where products run in the input dtype (compiled bfloat16 kernels, and the PyTorch
        # bfloat16 paths; the interpreter multiplies bfloat16 in float32).
        torch_error = (favor_attention(q, k, v, w, causal=causal, backend="torch").float() - ref).abs().max()
        tolerance = 2 * ulp + (2 * torch_error.item() if compute_types(dtype)["LOW"] else 0.0)
        torch.testing.assert_close(out.float(), ref.to(dtype).float(), rtol=0, atol=tolerance)


@pytest.mark.skipif(not FLOAT64, reason="compiled float64 products need triton >= 3.9")
def test_gradcheck_float64():
    q, k, v, w = _inputs(1, 1, 6, 6, 4, 4, dv=3)
    pad = torch.tensor([[False, False, True, False, False, False]], device=DEVICE)
    form_rows = get_kernel("softmax").exp_form(w).rows

    def bidirectional(q, k, v, rows):
        return triton_bidirectional_attention(q, k, v, rows, scale=0.7, norm=1.0, key_padding_mask=pad)

    def causal(q, k, v, rows):
        return triton_causal_attention(q, k, v, rows, scale=0.7, norm=1.0, key_padding_mask=pad)[0]

    for fn in (bidirectional, causal):
        assert torch.autograd.gradcheck(fn, (q, k, v, form_rows), fast_mode=True)


def test_float64_needs_a_triton_that_compiles_its_products():
    assert float64_reason((3, 6)) == "float64 products need triton >= 3.9 (installed: 3.6)"
    assert float64_reason((3, 9)) is None and float64_reason(None) is None


def test_inputs_whose_tiles_exceed_the_gpus_shared_memory_are_said():
    assert shared_memory_reason(64, 64, torch.bfloat16, 163) is None  # an A100
    assert shared_memory_reason(128, 128, torch.float32, 163) is None
    assert shared_memory_reason(128, 128, torch.float64, 227) == (  # 217 KiB and a 10 % margin
        "torch.float64 with head dimension 128 needs about 217 KiB of shared memory per program; "
        "this GPU offers 227 KiB"
    )
    assert "above the 256" in shared_memory_reason(512, 64, torch.bfloat16, 227)


def test_backend_choice_and_errors(monkeypatch):
    q, k, v, w = (t.detach().float() for t in _inputs(1, 1, 8, 8, 16, 16))
    with pytest.raises(ValueError, match=r"backend must be 'auto', 'torch' or 'triton', got 'cuda'"):
        favor_attention(q, k, v, w, backend="cuda")
    with pytest.raises(
        ValueError, match=r"backend='triton' cannot serve these inputs: kernel 'trig' has no Triton"
    ):
        favor_attention(q, k, v, w, kernel="trig", backend="triton")
    with pytest.raises(ValueError, match=r"kernel 'favor\+\+' has no Triton form"):
        favor_attention(q, k, v, w, kernel="favor++", backend="triton")
    # More batch·heads than a CUDA grid axis holds: said, before any kernel runs.
    many = torch.zeros(65536, 1, 1, 16, device=DEVICE)
    with pytest.raises(ValueError, match=r"B·H = 65,536 exceeds the 65,535 programs of a CUDA grid axis"):
        favor_attention(many, many, many, w, backend="triton")
    # "auto" keeps CPU tensors on the PyTorch paths (bit for bit).
    if DEVICE == "cpu":
        auto = favor_attention(q, k, v, w, causal=True, backend="auto")
        assert torch.equal(auto, favor_attention(q, k, v, w, causal=True, backend="torch"))
    # The Triton step has no backward.
    with pytest.raises(ValueError, match=r"the Triton step has no backward"):
        favor_attention_step(
            q[:, :, :1].requires_grad_(), k[:, :, :1], v[:, :, :1], None, w, backend="triton"
        )
    # Without the interpreter, CPU tensors are refused with the way out.
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match=r"set TRITON_INTERPRET=1"):
            favor_attention(q, k, v, w, backend="triton")
    # Without triton installed: a clear error for "triton", the PyTorch paths for "auto".
    import performers.ops.triton as triton_package

    monkeypatch.setattr(triton_package, "triton_available", lambda: False)
    with pytest.raises(ValueError, match=r"the triton package is not installed"):
        favor_attention(q, k, v, w, backend="triton")
    favor_attention(q, k, v, w)


# Each configuration compiles every kernel (up to a minute or more of one core with a cold
# triton cache): make test-slow, which CI runs.
@pytest.mark.slow
@pytest.mark.compile
@pytest.mark.parametrize(
    "dim, activation, dtype",
    [(64, "exp", "bfloat16"), (128, "exp", "bfloat16"), (64, "elu", "bfloat16"), (128, "exp", "float32"),
     (64, "exp", "float64")],
)  # fmt: skip
def test_kernels_compile_for_sm90_without_a_gpu_within_shared_memory(dim, activation, dtype):
    """Every kernel and mode lowers to a cubin for sm_90 (the compiler enforces typing rules the
    interpreter does not), with the default tiles for ``dim`` and ``dtype`` (float32 products in
    TF32, the faster and larger of its two forms), and needs no more shared memory per program
    than an A100 offers (163 KiB; an H100 has 227)."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    command = [
        sys.executable,
        "-m",
        "performers.ops.triton.compile_check",
        "--dim",
        str(dim),
        "--activation",
        activation,
        "--dtype",
        dtype,
        *(["--tf32"] if dtype == "float32" else []),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = json.loads(result.stdout)
    # 4 row-pass and 3 feature-pass modes, a varlen mode of each, 5 causal kernels and 3 of them
    # varlen, the decode step.
    assert len(records) == 18 and all(r["cubin_bytes"] > 0 for r in records)
    assert max(r["shared_bytes"] for r in records) <= 163 * 1024, records
    # The table the dispatcher compares with a GPU's shared memory holds at least this.
    size = getattr(torch, dtype).itemsize
    assert max(r["shared_bytes"] for r in records) <= SHARED_KIB[(size, max(64, dim))] * 1024


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_kernels_equal_the_cpu_path_at_real_sizes(dtype, causal):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 8, 2048, 64, generator=g) for _ in range(3))
    w = orthogonal_projection(256, 64, generator=g)
    pad = torch.zeros(2, 2048, dtype=torch.bool)
    pad[1, -100:] = True
    cpu = [t.clone().requires_grad_() for t in (q, k, v, w)]
    ref = favor_attention(*cpu, causal=causal, key_padding_mask=pad, backend="torch")
    ref_grads = _grads(ref, cpu)
    gpu = [
        t.cuda().to(dtype if i < 3 else torch.float32).requires_grad_() for i, t in enumerate((q, k, v, w))
    ]
    out = favor_attention(*gpu, causal=causal, key_padding_mask=pad.cuda(), backend="auto")
    grads = _grads(out.float(), gpu)
    tol = 2e-4 if dtype == torch.float32 else 3e-2
    scale = ref.abs().max().item()
    torch.testing.assert_close(out.float().cpu(), ref, rtol=0, atol=tol * scale)
    for a, e in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a.float().cpu(), e, rtol=0, atol=tol * e.abs().max().item())
