#!/usr/bin/env bash
# The GPU checks in one command, for a machine with CUDA, PyTorch and Triton installed (also one
# without network access): the tests marked `cuda` and the benchmark suite (performers bench gpu),
# writing gpu.json, gpu.md, gpu.png and log.txt to OUT_DIR (default docs/results/gpu).
#
#   bash scripts/gpu_suite.sh [OUT_DIR] [more options of performers bench gpu]
#
# The peers (flash-linear-attention, performer-pytorch) are optional. Without network on the GPU
# machine, fetch their wheels beforehand with `bash scripts/gpu_wheels.sh` (they land in .whl/),
# bring that folder along, and they are installed into a temporary folder first. The checkout's
# own source (src/) is used, installed or not. When $OUT is set (a folder collected after the
# run), the four files are copied there too.
set -uo pipefail
out_dir=${1:-docs/results/gpu}
shift $(($# > 0 ? 1 : 0))
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    site=$(mktemp -d)
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl \
        || { echo "gpu_suite: installing .whl/ failed" >&2; exit 1; }
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$out_dir"
{
    nvidia-smi -L 2>&1 || true
    "$python" -c 'import sys, torch, triton; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "triton", triton.__version__)'
    "$python" -m performers bench gpu --out "$out_dir" "$@"
} 2>&1 | tee "$out_dir/log.txt"
status=${PIPESTATUS[0]}
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
    for name in gpu.json gpu.md gpu.png log.txt; do
        [ -f "$out_dir/$name" ] && cp "$out_dir/$name" "$OUT/"
    done
fi
exit "$status"
