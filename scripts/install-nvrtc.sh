#!/usr/bin/env bash
# Installs NVRTC (CUDA 13.0, the GPU machine's version) from PyPI into the
# project-local folder .deps, where the engine finds it. The kernel compile
# test needs it; no GPU or CUDA toolkit is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
version=13.0.88
if ls .deps/nvidia/cu13/lib/libnvrtc.so.13 >/dev/null 2>&1 && [ -f ".deps/.nvrtc-$version" ]; then
    exit 0
fi
echo "== installing nvidia-cuda-nvrtc $version into .deps"
python3 -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
    --target .deps "nvidia-cuda-nvrtc==$version"
touch ".deps/.nvrtc-$version"
