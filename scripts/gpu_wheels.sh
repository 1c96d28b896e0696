#!/usr/bin/env bash
# Wheels of the GPU suite's optional peers, for a GPU machine without network access: downloaded
# here into .whl/ (pure-Python wheels, dependencies named one by one; the GPU machine brings
# torch, triton, einops and transformers). scripts/gpu_suite.sh installs them there.
set -euo pipefail
python=${PYTHON:-python3}
mkdir -p .whl
"$python" -m pip download --no-deps --only-binary=:all: -d .whl \
    flash-linear-attention==0.6.0 fla-core==0.6.0 torch-einops-utils==0.2.0 \
    performer-pytorch==1.1.4 local-attention==1.11.2 axial-positional-embedding==0.3.12 \
    hyper-connections==0.4.11
ls -l .whl
