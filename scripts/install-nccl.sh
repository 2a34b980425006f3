#!/usr/bin/env bash
# Installs NCCL (the build PyTorch's CUDA 13 wheels use) from PyPI into the
# project-local folder .deps, where the engine finds it. The bootstrap tests
# call the real ncclGetVersion and ncclGetUniqueId and hand a real NCCL id
# between processes; no GPU is needed. Only the library is unpacked: `pip
# install --target .deps` would replace the nvidia/ folder NVRTC shares.
set -euo pipefail
cd "$(dirname "$0")/.."
version=2.30.7
if [ -f .deps/nvidia/nccl/lib/libnccl.so.2 ] && [ -f ".deps/.nccl-$version" ]; then
    exit 0
fi
echo "== installing nvidia-nccl-cu13 $version into .deps"
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --dest "$wheels" "nvidia-nccl-cu13==$version"
python3 - "$wheels"/nvidia_nccl_cu13-*.whl .deps <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract("nvidia/nccl/lib/libnccl.so.2", sys.argv[2])
PY
touch ".deps/.nccl-$version"
