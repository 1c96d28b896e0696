"""Compile every FAVOR Triton kernel for a CUDA architecture, without a GPU.

The Triton interpreter (``TRITON_INTERPRET=1``) checks what the kernels compute; it does not
check that they *compile*: typing rules, loop-carried types and constexpr globals are enforced
only by the compiler. ``triton.compile`` lowers a kernel through TTIR, TTGIR, LLVM IR and PTX to
a cubin on any machine (``ptxas`` ships with triton), so this runs in ``make test`` on CPU.

    python -m performers.ops.triton.compile_check [--arch 90] [--dtype bfloat16]

Must run without ``TRITON_INTERPRET`` (interpreted kernels cannot be compiled).
"""

from __future__ import annotations

import argparse
import json
import time

__all__ = ["compile_all"]

_INTS = {"L", "M", "D", "DV", "N", "heads", "off_bh", "off_l", "span", "span_chunks"}
_FLOATS = {"half_norm", "eps"}
# Pointers that carry the inputs (in their dtype); the others are float32 buffers.
_INPUTS = {"x_ptr", "q_ptr", "k_ptr", "v_ptr"}


def _variants():
    from performers.ops.triton import bidirectional, causal, decode

    # Per-feature offsets are an input of every pass but the key row maxima (the causal path's)
    # and the key summary (which finds them).
    b = bidirectional
    for mode in (b.READOUT, b.QUERY_GRAD, b.KEY_GRAD, b.ROW_MAX):
        options = {"MODE": mode.value, "HAS_PAD": True, "HAS_COL": mode.value != b.ROW_MAX.value, "BL": 64}
        yield b.row_pass, {**options, "IS_VARLEN": False}
    for mode in (b.SUMMARY, b.QUERY_PARAMS, b.KEY_PARAMS):
        options = {"MODE": mode.value, "HAS_PAD": True, "HAS_COL": mode.value != b.SUMMARY.value, "BL": 64}
        yield b.feature_pass, {**options, "IS_VARLEN": False}
    # The packed (varlen) forms: programs read their bounds and summary row from a table. One
    # mode of each pass that reads every per-sequence operand (offsets, S, z; bounds, segments).
    yield (
        b.row_pass,
        {"MODE": b.QUERY_GRAD.value, "HAS_PAD": False, "HAS_COL": True, "BL": 64, "IS_VARLEN": True},
    )
    yield (
        b.feature_pass,
        {"MODE": b.KEY_PARAMS.value, "HAS_PAD": False, "HAS_COL": True, "BL": 64, "IS_VARLEN": True},
    )
    unpacked = {"IS_VARLEN": False}
    yield causal.state_pass, {"HAS_INIT": True, "HAS_PAD": True, "BC": 64, **unpacked}
    yield causal.output_pass, {"HAS_PAD": True, "BC": 64, **unpacked}
    yield causal.adjoint_pass, {"HAS_FINAL_GRAD": True, "BC": 64, **unpacked}
    yield causal.input_grad_pass, {"HAS_PAD": True, "BC": 64, **unpacked}
    yield causal.param_grad_pass, {"HAS_PAD": True, "BC": 64, **unpacked}
    # Packed: the state passes run through a sequence's chunks from a table (forward and in
    # reverse), the chunk passes read their bounds (output_pass and param_grad_pass as these).
    yield causal.state_pass, {"HAS_INIT": True, "HAS_PAD": False, "BC": 64, "IS_VARLEN": True}
    yield causal.adjoint_pass, {"HAS_FINAL_GRAD": True, "BC": 64, "IS_VARLEN": True}
    yield causal.input_grad_pass, {"HAS_PAD": False, "BC": 64, "IS_VARLEN": True}
    yield decode.step_kernel, {}


def compile_all(
    arch: int = 90,
    dtype: str = "bfloat16",
    dim: int = 64,
    tile: int | None = None,
    features_tile: int | None = None,
    activation: str = "exp",
    tf32: bool = False,
) -> list[dict]:
    """Compile each kernel (every mode) to a cubin for ``sm_{arch}`` with inputs of ``dtype``
    (``"float64"``, ``"float32"``, ``"float16"`` or ``"bfloat16"``) and head dimension ``dim``, with ``tile``
    positions and ``features_tile`` features per tile (default: the launch's choice for ``dim``,
    :meth:`~performers.ops.triton.launch.Blocks.for_dims`) and the feature map ``activation``
    (``"exp"`` or a generalized one, :data:`~performers.ops.triton.launch.ACTIVATIONS`), float32
    products in TF32 when ``tf32`` (else IEEE); returns
    one record per kernel (name, constexprs, seconds, cubin bytes, shared memory per program).
    Raises the compiler's error."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from performers.ops.triton.launch import Blocks, activation_code, compute_types

    torch_dtype = getattr(torch, dtype)
    default = Blocks.for_dims(dim, dim, torch_dtype)
    tile = tile or default.rows
    features_tile = features_tile or default.features
    pointer = {"float64": "*fp64", "float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16"}[dtype]
    buffer = "*fp64" if dtype == "float64" else "*fp32"  # the accumulation dtype's buffers
    types = {**compute_types(torch_dtype, tf32), "ACT": activation_code(activation), "FEPS": 1e-3}
    records = []
    for kernel, options in _variants():
        options = {key: (tile if key in ("BL", "BC") else value) for key, value in options.items()}
        if activation != "exp" and "HAS_COL" in options:
            options["HAS_COL"] = False  # generalized kernels have no offsets
        constexprs = {"BM": features_tile, "BD": dim, "BV": dim, **types, **options}
        signature = {}
        for name in kernel.arg_names:
            if name in constexprs:
                signature[name] = "constexpr"
            elif name in _INTS:
                signature[name] = "i32"
            elif name in _FLOATS:
                signature[name] = "fp32"
            elif name == "pad_ptr":
                signature[name] = "*i8"
            elif name in ("table_ptr", "seqs_ptr"):
                signature[name] = "*i32"
            else:
                signature[name] = pointer if name in _INPUTS else buffer
        start = time.perf_counter()
        compiled = triton.compile(
            ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
            target=GPUTarget("cuda", arch, 32),
        )
        records.append(
            {
                "kernel": kernel.__name__,
                "options": {k: v for k, v in options.items()},
                "seconds": round(time.perf_counter() - start, 2),
                "cubin_bytes": len(compiled.asm["cubin"]),
                "shared_bytes": compiled.metadata.shared,
            }
        )
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability ×10 (80, 90, ...)")
    parser.add_argument("--dtype", default="bfloat16", choices=["float64", "float32", "float16", "bfloat16"])
    parser.add_argument("--tile", type=int, default=None, help="positions per tile (default: the launch's)")
    parser.add_argument("--dim", type=int, default=64, help="head dimension (a power of two)")
    parser.add_argument("--features-tile", type=int, default=None, help="default: the launch's choice")
    parser.add_argument("--activation", default="exp", help="exp, relu, elu, abs or plain-exp")
    parser.add_argument("--tf32", action="store_true", help="float32 products in TF32 (else IEEE)")
    args = parser.parse_args(argv)
    records = compile_all(
        args.arch, args.dtype, args.dim, args.tile, args.features_tile, args.activation, args.tf32
    )
    print(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
