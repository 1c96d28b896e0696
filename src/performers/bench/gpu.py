"""The GPU suite: the CUDA tests, then FAVOR attention's time and memory on one GPU against
FlashAttention (PyTorch SDPA), flash-linear-attention (FLA) and performer-pytorch, decoding,
and protein-model training throughput — in one command, within a time budget.

    performers bench gpu --out docs/results/gpu

Attention points: forward and forward+backward time (median of CUDA-event timings after a
warm-up) and peak memory (``torch.cuda.max_memory_allocated`` above the inputs) of one call,
``B = 1``, for every ``L``, ``D``, ``M`` and direction asked, in bfloat16 by default. Methods:

* ``favor-triton`` / ``favor-torch``: :func:`performers.favor_attention` with
  ``backend="triton"`` / ``"torch"``;
* ``sdpa``: ``F.scaled_dot_product_attention`` restricted to the flash backend on CUDA;
* ``fla-chunk`` / ``fla-fused-chunk``: FLA's ``chunk_linear_attn`` / ``fused_chunk_linear_attn``
  with key dimension ``M`` (the feature width FAVOR+ multiplies by), causal only — FLA has no
  bidirectional linear attention; skipped with a note when ``fla`` is not installed;
* ``performer-pytorch``: ``FastAttention`` of the performer-pytorch library (up to 16k).

A point that runs out of memory is recorded as such; once the budget is spent the remaining
points are recorded as skipped. On CPU (``--device cpu``, small sizes) the same code runs with
wall-clock timing and no memory column: that is how it is tested without a GPU.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from performers.bench.environment import environment
from performers.bench.gpu_report import (
    TARGET_DIM,
    TARGET_FEATURES,
    TARGET_HEADS,
    TARGET_LENGTH,
    format_report,
    plot,
)
from performers.bench.results import write_results
from performers.utils import IGNORE_INDEX, atomic_write

__all__ = ["METHODS", "AttentionSpec", "profile_kernels", "run_gpu_suite"]

METHODS = ("favor-triton", "favor-torch", "sdpa", "fla-chunk", "fla-fused-chunk", "performer-pytorch")
# Methods whose cost does not depend on M: measured once per (L, D, direction).
_NO_FEATURES = {"sdpa"}
_PEER_MAX_LENGTH = 16384


@dataclass
class AttentionSpec:
    method: str
    length: int
    causal: bool
    heads: int = 8
    dim: int = 64
    features: int = 256
    batch: int = 1
    dtype: str = "bfloat16"


@dataclass
class AttentionPoint:
    spec: AttentionSpec
    forward_ms: float | None = None
    forward_backward_ms: float | None = None
    peak_mib: float | None = None
    note: str | None = None


@dataclass
class Budget:
    seconds: float
    start: float = field(default_factory=time.perf_counter)

    def spent(self) -> bool:
        return time.perf_counter() - self.start > self.seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up (compilation, autotuning, allocator)
    _sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


@contextmanager
def _recorded(point, device: torch.device):
    """Run one point; a failure becomes its ``note`` (an :class:`AttentionPoint` or a dict), so
    that one failing point cannot end the suite. The GPU's cache and peak statistics are reset
    after it."""
    note = None
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        note = "out of memory"
    except Exception as error:
        note = f"{type(error).__name__}: {str(error)[:200]}"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
    if note is not None:
        if isinstance(point, dict):
            point["note"] = note
        else:
            point.note = note


def _attention(spec: AttentionSpec, device: torch.device):
    """(inputs requiring grad, forward function) for one method, or a str saying why not."""
    from performers import favor_attention, orthogonal_projection

    dtype = getattr(torch, spec.dtype)
    g = torch.Generator().manual_seed(0)
    b, h, length, d, m = spec.batch, spec.heads, spec.length, spec.dim, spec.features

    def tensor(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype).requires_grad_()

    if spec.method in ("favor-triton", "favor-torch"):
        q, k, v = tensor(b, h, length, d), tensor(b, h, length, d), tensor(b, h, length, d)
        w = orthogonal_projection(m, d, generator=g).to(device)
        backend = spec.method.removeprefix("favor-")
        return [q, k, v], lambda: favor_attention(q, k, v, w, is_causal=spec.causal, backend=backend)
    if spec.method == "sdpa":
        q, k, v = tensor(b, h, length, d), tensor(b, h, length, d), tensor(b, h, length, d)
        if device.type != "cuda":
            return [q, k, v], lambda: F.scaled_dot_product_attention(q, k, v, is_causal=spec.causal)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def flash():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=spec.causal)

        return [q, k, v], flash
    if spec.method in ("fla-chunk", "fla-fused-chunk"):
        if not spec.causal:
            return "FLA has no bidirectional linear attention"
        try:
            from fla.ops.linear_attn import chunk_linear_attn, fused_chunk_linear_attn
        except Exception as error:
            return f"flash-linear-attention not importable ({type(error).__name__}: {error})"
        fn = chunk_linear_attn if spec.method == "fla-chunk" else fused_chunk_linear_attn
        # FLA's layout is (B, T, H, K); key dimension M as FAVOR+'s features, normalized output.
        q, k, v = tensor(b, length, h, m), tensor(b, length, h, m), tensor(b, length, h, d)
        return [q, k, v], lambda: fn(q, k, v, normalize=True)[0]
    if spec.method == "performer-pytorch":
        if length > _PEER_MAX_LENGTH:
            return f"not run above L = {_PEER_MAX_LENGTH:,}"
        try:
            from performer_pytorch import FastAttention
        except Exception as error:
            return f"performer-pytorch not importable ({type(error).__name__})"
        module = FastAttention(dim_heads=d, nb_features=m, causal=spec.causal).to(device)
        q, k, v = tensor(b, h, length, d), tensor(b, h, length, d), tensor(b, h, length, d)
        return [q, k, v], lambda: module(q, k, v)
    raise ValueError(f"unknown method {spec.method!r}; choose from {METHODS}")


def _calls(spec: AttentionSpec, device: torch.device):
    """(forward, forward+backward) of one method's call, or a str saying why not."""
    built = _attention(spec, device)
    if isinstance(built, str):
        return built
    inputs, forward = built
    grad = torch.randn_like(forward())

    def forward_backward():
        forward().backward(grad)
        for t in inputs:
            t.grad = None

    return forward, forward_backward


def measure_attention(spec: AttentionSpec, device: torch.device, repeats: int) -> AttentionPoint:
    """Forward and forward+backward time and peak memory of one attention call."""
    point = AttentionPoint(spec)
    with _recorded(point, device):
        calls = _calls(spec, device)
        if isinstance(calls, str):
            point.note = calls
            return point
        forward, forward_backward = calls
        with torch.no_grad():
            point.forward_ms = _median_ms(forward, device, repeats)
        point.forward_backward_ms = _median_ms(forward_backward, device, repeats)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            forward_backward()
            torch.cuda.synchronize(device)
            point.peak_mib = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return point


def profile_kernels(spec: AttentionSpec, device: torch.device, top: int = 10) -> dict:
    """Where one forward+backward call of ``spec`` spends its time, kernel by kernel: the
    ``top`` entries of ``torch.profiler`` by self time on the device (CUDA kernels; on CPU, the
    operators), with their calls, milliseconds and share of the total — the profile behind a
    target that is missed. Measured after a warm-up call (compilation excluded)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    record: dict = {
        "method": spec.method, "causal": spec.causal, "length": spec.length,
        "heads": spec.heads, "dim": spec.dim, "features": spec.features,
    }  # fmt: skip
    with _recorded(record, device):
        calls = _calls(spec, device)
        if isinstance(calls, str):
            return {**record, "note": calls}
        _, forward_backward = calls
        forward_backward()  # warm-up: compilation and the allocator stay out of the profile
        _sync(device)
        cuda = device.type == "cuda"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as profiler:
            forward_backward()
            _sync(device)
        times = {}
        if cuda:
            # Kernels (and copies) only, summed by name from the raw events: an operator's row
            # would repeat the time of the kernels it launched.
            entries = [
                (e.name, 1, e.self_device_time_total)
                for e in profiler.events()
                if e.device_type == DeviceType.CUDA
            ]
        else:
            entries = [(e.key, e.count, e.self_cpu_time_total) for e in profiler.key_averages()]
        for name, count, us in entries:
            if us > 0:
                calls, total = times.get(name[:80], (0, 0.0))
                times[name[:80]] = (calls + count, total + us)
        total_us = sum(us for _, us in times.values())
        ranked = sorted(times.items(), key=lambda item: -item[1][1])[:top]
        record["total_ms"] = total_us / 1e3
        record["kernels"] = [
            {"name": name, "calls": calls, "ms": us / 1e3, "share": us / total_us if total_us else 0.0}
            for name, (calls, us) in ranked
        ]
    return record


def measure_decode(
    context: int,
    method: str,
    device: torch.device,
    *,
    heads=8,
    dim=64,
    features=256,
    dtype="bfloat16",
    repeats=20,
) -> dict:
    """Time of one generated position after ``context`` positions: the FAVOR step (Triton or
    PyTorch) against exact attention reading a KV cache of that length (SDPA)."""
    from performers import favor_attention_step, orthogonal_projection

    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, 1, dim, generator=g).to(device, dt) for _ in range(3))
    record = {"context": context, "method": method}
    with _recorded(record, device):
        with torch.no_grad():
            if method.startswith("favor"):
                w = orthogonal_projection(features, dim, generator=g).to(device)
                backend = method.removeprefix("favor-")
                # The state after `context` positions has the same size whatever the context.
                _, state = favor_attention_step(q, k, v, None, w, backend=backend)
                record["step_ms"] = _median_ms(
                    lambda: favor_attention_step(q, k, v, state, w, backend=backend), device, repeats
                )
            else:
                cache_k, cache_v = (
                    torch.randn(1, heads, context, dim, generator=g).to(device, dt) for _ in range(2)
                )
                record["step_ms"] = _median_ms(
                    lambda: F.scaled_dot_product_attention(q, cache_k, cache_v), device, repeats
                )
    return record


def measure_training(
    length: int, attention: str, device: torch.device, *, tokens_per_step: int = 16384, steps: int = 5
) -> dict:
    """Training tokens/s of the protein masked LM (6 layers, d_model 512, 8 heads, d_ff 2048,
    M = 256) with FAVOR+ or exact attention, AdamW, bfloat16 autocast."""
    from performers import FavorConfig, PerformerConfig, PerformerForMaskedLM

    batch = max(1, tokens_per_step // length)
    config = PerformerConfig(
        vocab_size=25, d_model=512, num_layers=6, num_heads=8, d_ff=2048, dropout=0.0,
        max_position_embeddings=length, attention=attention, favor=FavorConfig(num_features=256),
    )  # fmt: skip
    record = {"length": length, "attention": attention, "batch": batch}
    with _recorded(record, device):
        model = PerformerForMaskedLM(config).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(5, 25, (batch, length), generator=g).to(device)
        labels = torch.where(torch.rand(batch, length, generator=g).to(device) < 0.15, ids, IGNORE_INDEX)

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model(ids, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        seconds = _median_ms(step, device, steps) / 1e3
        record["tokens_per_s"] = batch * length / seconds
        if device.type == "cuda":
            record["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return record


def cuda_test_files(tests: Path) -> list[Path]:
    """The test files under ``tests`` (any depth) that hold tests marked ``cuda`` (read, not
    imported: a file whose imports need a package the GPU machine lacks cannot stop the others)."""
    return sorted(f for f in tests.rglob("test_*.py") if "pytest.mark.cuda" in f.read_text())


def run_tests(tests: Path, timeout_s: float = 240.0) -> dict:
    """Run the tests marked ``cuda`` (``tests/ops/test_triton.py`` on CUDA tensors, its parity tests
    at real sizes, GPU training with exact resume, underflow counts without a host sync) in a
    subprocess, but not those marked ``compile`` (compilation for a GPU on the CPU, checked by
    ``make test`` anywhere). On timeout the whole process group is stopped."""
    files = cuda_test_files(tests) if tests.is_dir() else []
    if not files:
        return {"status": "skipped", "reason": f"no test marked cuda under {tests} (run from a checkout)"}
    start = time.perf_counter()
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda and not compile",
        *map(str, files),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=timeout_s)
        status = "passed" if process.returncode == 0 else "failed"
        summary = None
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # pytest and anything it started
        output, _ = process.communicate()
        status, summary = "timeout", f"stopped after {timeout_s:.0f} s"
    lines = (output or "").strip().splitlines()
    return {
        "status": status,
        "summary": summary or (lines[-1] if lines else ""),
        "files": [f.relative_to(tests).as_posix() for f in files],
        "seconds": round(time.perf_counter() - start, 1),
        "output_tail": "\n".join(lines[-40:]),
    }


def attention_specs(
    lengths, dims, features, methods, *, heads=8, dtype="bfloat16", wide_heads_length: int | None = 4096
) -> list[AttentionSpec]:
    specs = []
    for causal in (False, True):
        for d in dims:
            for length in lengths:
                for method in methods:
                    for m in [features[0]] if method in _NO_FEATURES else features:
                        specs.append(AttentionSpec(method, length, causal, heads, d, m, dtype=dtype))
    if wide_heads_length:
        for causal in (False, True):
            for method in methods:
                specs.append(
                    AttentionSpec(method, wide_heads_length, causal, 32, dims[0], features[-1], dtype=dtype)
                )
    return specs


def _priority(spec: AttentionSpec) -> int:
    """0: the targets' points; 1: the target configuration's other lengths for our kernels and
    the peers that scale (the memory and scaling curves); 2: everything else."""
    target_shape = (
        spec.dim == TARGET_DIM
        and spec.heads == TARGET_HEADS
        and (spec.features == TARGET_FEATURES or spec.method in _NO_FEATURES)
    )
    if target_shape and spec.length == TARGET_LENGTH:
        return 0
    if target_shape and spec.method in ("favor-triton", "sdpa", "fla-chunk"):
        return 1
    return 2


def run_gpu_suite(
    out: str | Path,
    *,
    device: str = "cuda",
    lengths=(1024, 4096, 16384, 65536, 131072),
    dims=(64, 128),
    features=(128, 256),
    methods=METHODS,
    dtype: str = "bfloat16",
    repeats: int = 5,
    decode_contexts=(1024, 16384, 131072),
    decode_methods=("favor-triton", "favor-torch", "sdpa-kv-cache"),
    training_lengths=(1024, 8192),
    training_tokens: int = 16384,
    tests: str | Path | None = "tests",
    budget_s: float = 450.0,
    tests_timeout_s: float = 240.0,
    wide_heads_length: int | None = 4096,
    profile_methods=("favor-triton", "fla-chunk"),
    profile_length: int = TARGET_LENGTH,
    command: str = "",
    log=print,
) -> dict:
    """Run the suite and write ``gpu.json``, ``gpu.md`` and ``gpu.png`` under ``out``.

    ``budget_s`` counts from the start, the tests included; once it is spent the remaining
    points are recorded as skipped. The most important points run first: the CUDA tests, the
    targets' points (L = 16k, D = 64, M = 256), a kernel-by-kernel profile of
    ``profile_methods`` at ``profile_length`` (H = 8, the first D, the last M: the targets'
    configuration by default), decoding, the target configuration's other lengths, training,
    then the rest of the grid. ``gpu.json`` and ``gpu.md`` are rewritten
    after every point, so a run stopped from outside leaves everything measured so far.
    """
    dev = torch.device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    budget = Budget(budget_s)
    results: dict = {"command": command, "environment": environment(), "device": device, "dtype": dtype}
    if dev.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(dev)
    import performers.ops.triton as triton_package

    results["triton"] = triton_package.triton_unavailable_reason(dev) or "available"
    results.update(attention=[], profile=[], decode=[], training=[], elapsed_s=0.0)

    def save(final: bool = False) -> None:
        results["elapsed_s"] = round(time.perf_counter() - budget.start, 1)
        results["complete"] = final
        write_results(out / "gpu.json", results, format_report(results))
        if final:
            try:
                atomic_write(out / "gpu.png", lambda tmp: plot(results, tmp))
            except ImportError as error:  # no matplotlib on the GPU machine: the tables remain
                log(f"no plot: {error}")

    if tests:
        results["tests"] = run_tests(Path(tests), timeout_s=min(tests_timeout_s, budget_s))
    else:
        results["tests"] = {"status": "skipped", "reason": "--no-tests"}
    log(f"tests: {results['tests'].get('summary', results['tests'].get('reason'))}")
    save()

    specs = attention_specs(
        lengths, dims, features, methods, dtype=dtype, wide_heads_length=wide_heads_length
    )
    by_priority = [[spec for spec in specs if _priority(spec) == level] for level in range(3)]

    def attention(level: int) -> None:
        for spec in by_priority[level]:
            if budget.spent():
                point = AttentionPoint(spec, note="skipped: time budget spent")
            else:
                point = measure_attention(spec, dev, repeats)
                direction = "causal" if spec.causal else "bidir"
                log(
                    f"{spec.method:18s} L={spec.length:>6} H={spec.heads} D={spec.dim} M={spec.features} "
                    f"{direction}: fwd {point.forward_ms} fwd+bwd {point.forward_backward_ms} "
                    f"peak {point.peak_mib} {point.note or ''}"
                )
            results["attention"].append(asdict(point))
            save()

    def point(section: str, keys: dict, measure: Callable[[], dict], label: str, value: str) -> None:
        """One profile, decode or training point: measured, or recorded as skipped once the budget
        is spent."""
        record = {**keys, "note": "skipped: time budget spent"} if budget.spent() else measure()
        log(f"{label}: {record.get(value)} {value} {record.get('note', '')}")
        results[section].append(record)
        save()

    attention(0)
    for causal in (False, True):
        for method in profile_methods:
            spec = AttentionSpec(method, profile_length, causal, 8, dims[0], features[-1], dtype=dtype)
            keys = {"method": method, "causal": causal, "length": profile_length, "heads": 8}
            keys.update(dim=dims[0], features=features[-1])
            label = f"profile {method} {'causal' if causal else 'bidir'}"
            point("profile", keys, partial(profile_kernels, spec, dev), label, "total_ms")
    for context in decode_contexts:
        for method in decode_methods:
            measure = partial(measure_decode, context, method, dev, dtype=dtype)
            point(
                "decode",
                {"context": context, "method": method},
                measure,
                f"decode {method} {context}",
                "step_ms",
            )
    attention(1)
    for length in training_lengths:
        for name in ("favor", "exact"):
            measure = partial(measure_training, length, name, dev, tokens_per_step=training_tokens)
            keys = {"length": length, "attention": name, "batch": None}
            point("training", keys, measure, f"training {name} L={length}", "tokens_per_s")
    attention(2)
    save(final=True)
    return results
