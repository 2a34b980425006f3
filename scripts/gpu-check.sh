#!/usr/bin/env bash
# One prepared run on a GPU machine (no Rust toolchain, no network there).
#
#   scripts/gpu-check.sh --prepare   here: builds the trainer and the GPU test
#                                    executables into gpu-bin/ (git-ignored,
#                                    stripped, carried with the working tree)
#   scripts/gpu-check.sh OUT         on the GPU machine: writes logs and JSON
#                                    results into OUT, in under 8 minutes
#
# On the GPU machine it prints nvidia-smi, finds the CUDA libraries (cuDNN and
# cuBLAS inside PyTorch's site-packages/nvidia/*/lib, NVRTC there or in the
# CUDA toolkit) and passes them as M2T_CUDA_LIBS, runs every GPU parity test,
# measures the kernel JIT cold and warm, runs `trainer bench` (resnet50, bs
# 128, 224 px, bf16) next to the PyTorch baseline of the same step and the
# op benchmark (`trainer bench --ops`), and a
# short Fashion-MNIST pretrain with kNN (the dataset travels in gpu-bin/).
# QUICK=1 measures each side of the benchmark once and stops there.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$root/gpu-bin

if [ "${1:-}" = "--prepare" ]; then
    set -e
    cd "$root"
    rm -rf "$bin" && mkdir -p "$bin"
    cargo build --release -p trainer
    cp target/release/trainer "$bin/"
    # Test executables: cargo names them with a hash; take them from its JSON.
    cargo test --no-run -p tests --test cuda_parity --message-format=json 2>/dev/null |
        python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        shutil.copy(m["executable"], sys.argv[1] + "/" + m["target"]["name"])
' "$bin"
    strip "$bin"/*
    # The GPU machine has no Fashion-MNIST package: carry the 30 MB of it.
    bash scripts/install-fashion-mnist.sh
    cp -r /usr/share/datasets/fashion-mnist "$bin/fashion-mnist"
    ls -la "$bin"
    du -sh "$bin"
    exit 0
fi

out=${1:?usage: scripts/gpu-check.sh --prepare | OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
[ -x "$bin/trainer" ] || { echo "gpu-bin/ is missing: run scripts/gpu-check.sh --prepare first" >&2; exit 2; }
start=$(date +%s)
step() { echo "== [$(( $(date +%s) - start )) s] $*"; }

step "nvidia-smi"
nvidia-smi >"$out/nvidia-smi.txt" 2>&1
nvidia-smi -L 2>&1

step "CUDA libraries"
py=$(command -v python3 || true)
libs=$("$py" - <<'PY' 2>/dev/null
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()]
try:
    import torch
    roots.insert(0, os.path.dirname(os.path.dirname(torch.__file__)))
except Exception:
    pass
dirs = []
for r in roots:
    dirs += sorted(glob.glob(os.path.join(r, "nvidia", "*", "lib")))
dirs += [d for d in ("/usr/local/cuda/lib64",) if os.path.isdir(d)]
print(":".join(dict.fromkeys(dirs)))
PY
)
export M2T_CUDA_LIBS=$libs
echo "M2T_CUDA_LIBS=$M2T_CUDA_LIBS" | tee "$out/libs.txt"
export M2T_KERNEL_CACHE=$out/kernel-cache
"$bin/trainer" info 2>&1 | tee "$out/info.txt"

step "GPU parity tests"
"$bin/cuda_parity" --test-threads=1 --nocapture >"$out/parity.log" 2>&1
echo "exit $?" >>"$out/parity.log"
grep -E "^test |test result|panicked|skipped|rror|exceeds" "$out/parity.log" | cut -c1-300

step "kernel JIT: cold then warm"
rm -rf "$M2T_KERNEL_CACHE"
"$bin/trainer" bench --jit --json >"$out/jit-cold.json" 2>"$out/jit-cold.log"; cat "$out/jit-cold.json"
"$bin/trainer" bench --jit --json >"$out/jit-warm.json" 2>"$out/jit-warm.log"; cat "$out/jit-warm.json"

if [ -n "${QUICK:-}" ]; then
    step "M2T step, engine then PyTorch eager AMP channels_last, once each (QUICK)"
    timeout 150 "$bin/trainer" bench --arch resnet50 --bs 128 --res 224 --device cuda --precision bf16 --steps 5 --json \
        >"$out/bench-engine.json" 2>"$out/bench-engine.log"
    echo "exit $?" >>"$out/bench-engine.log"
    cat "$out/bench-engine.json"; tail -3 "$out/bench-engine.log"
    timeout 150 "$py" "$root/benches/torch_baseline.py" --arch resnet50 --bs 128 --res 224 --device cuda \
        --precision bf16 --channels-last --steps 5 --json >"$out/bench-torch.json" 2>"$out/bench-torch.log"
    echo "exit $?" >>"$out/bench-torch.log"
    cat "$out/bench-torch.json"; tail -3 "$out/bench-torch.log"
    step "done (QUICK)"
    exit 0
fi

step "M2T step: engine vs PyTorch (resnet50, bs 128, 224 px, bf16)"
TRAINER=$bin/trainer PYTHON=$py RUNS=${RUNS:-2} timeout 200 bash "$root/benches/compare.sh" \
    --arch resnet50 --bs 128 --res 224 --precision bf16 --device cuda --channels-last --steps 10 \
    >"$out/bench.log" 2>&1
echo "exit $?" >>"$out/bench.log"
tail -15 "$out/bench.log"

step "op benchmark: resnet50 convolutions (cuDNN algorithm, TFLOP/s) and fused batch norm (GB/s)"
timeout 90 "$bin/trainer" bench --ops --device cuda --precision bf16 --steps 5 >"$out/ops.txt" 2>"$out/ops.log"
echo "exit $?" >>"$out/ops.log"
cut -c1-160 "$out/ops.txt" | head -40

if [ -d /usr/share/datasets/fashion-mnist ] || [ -d "$root/gpu-bin/fashion-mnist" ]; then
    step "Fashion-MNIST pretrain (about 2 minutes) with kNN"
    data=/usr/share/datasets/fashion-mnist
    [ -d "$data" ] || data=$root/gpu-bin/fashion-mnist
    timeout 150 "$bin/trainer" pretrain --data "$data" --arch resnet18 --width 32 --device cuda --precision bf16 \
        --bs 256 --res 32 --steps 1000 --lr 0.1 --crop-min 0.2 --out "$out/fashion-run" >"$out/pretrain.log" 2>&1
    echo "exit $?" >>"$out/pretrain.log"
    tail -8 "$out/pretrain.log"
else
    step "Fashion-MNIST pretrain skipped: dataset not on this machine"
fi
step "done"
