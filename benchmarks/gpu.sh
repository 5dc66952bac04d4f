#!/usr/bin/env bash
# The one GPU command: install what is missing, then python -m benchmarks.gpu within 9 minutes.
#
#   benchmarks/gpu.sh                              # on a CUDA machine: --device cuda, full
#   benchmarks/gpu.sh --device cpu --short         # anywhere
#
# Uses the python3 that already has torch (a device image's CUDA build).  Without torch,
# plain `pip install torch` (PyPI's default Linux wheel is the CUDA build; the README's
# torch==2.13.0 from the CPU index is for CPU machines).  A machine without network gets
# the missing wheels in .whl/ (e.g. `pip download --no-deps --only-binary=:all: -d .whl
# cryptography cffi pycparser`), installed with --no-index.  Results: $OUT/gpu_results.md
# when $OUT is set, else ./gpu_results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/veil-site .whl/*.whl
    export PYTHONPATH=/tmp/veil-site${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q torch
"$PY" -c "import veil.mpc" 2>/dev/null || "$PY" -m pip install -q --no-deps --no-build-isolation -e .
"$PY" -c "import cryptography, transformers" 2>/dev/null || "$PY" -m pip install -q cryptography transformers
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
out=${OUT:-.}/gpu_results.md
timeout 540 "$PY" -m benchmarks.gpu --budget-s 420 --out "$out" "$@"
