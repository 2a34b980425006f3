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
# 128, 224 px, bf16) next to the PyTorch baseline of the same step (eager AMP
# channels_last, then torch.compile), a short Fashion-MNIST pretrain with kNN
# (the dataset travels in gpu-bin/) and the op benchmark (`trainer bench
# --ops`), and the same step captured as a CUDA graph. Each step's time limit is cut to what is left of 470 s, in that
# order of priority. OUT/summary.json gathers the figures.
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
    cargo test --no-run -p tests --test cuda_parity --test cuda_graph --message-format=json 2>/dev/null |
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
deadline=470
step() { echo "== [$(( $(date +%s) - start )) s] $*"; }
# A step's time limit: its own, or what is left before the deadline.
limit() {
    local left=$(( deadline - ($(date +%s) - start) ))
    [ "$left" -lt "$1" ] && echo $(( left > 1 ? left : 1 )) || echo "$1"
}

step "nvidia-smi"
nvidia-smi >"$out/nvidia-smi.txt" 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$out/gpu.txt"

step "CUDA libraries"
# The Python that holds PyTorch: $PYTHON, else python3 (on the GPU machines).
py=
for candidate in ${PYTHON:-} python3 /opt/torch/.venv/bin/python3; do
    if "$candidate" -c "import torch" 2>/dev/null; then py=$candidate; break; fi
done
[ -n "$py" ] || { py=python3; echo "no Python with PyTorch found: the PyTorch baselines will fail"; }
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
{
    echo "M2T_CUDA_LIBS=$M2T_CUDA_LIBS"
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    echo "-- the dynamic loader's own CUDA libraries (ldconfig -p):"
    ldconfig -p 2>/dev/null | grep -E "libcudnn|libcublas|libnvrtc" || echo "none"
    echo "-- cuDNN files in each folder searched:"
    for d in ${M2T_CUDA_LIBS//:/ }; do
        files=$(cd "$d" && ls libcudnn*.so* 2>/dev/null | tr '\n' ' ')
        [ -n "$files" ] && echo "$d: $files"
    done
} | tee "$out/libs.txt"
export M2T_KERNEL_CACHE=$out/kernel-cache
"$bin/trainer" info 2>&1 | tee "$out/info.txt"

step "GPU parity tests"
timeout "$(limit 120)" "$bin/cuda_parity" --test-threads=1 --nocapture >"$out/parity.log" 2>&1
echo "exit $?" >>"$out/parity.log"
timeout "$(limit 60)" "$bin/cuda_graph" --test-threads=1 --nocapture >>"$out/parity.log" 2>&1
echo "exit $?" >>"$out/parity.log"
grep -E "^test |test result|panicked|skipped|rror|exceeds" "$out/parity.log" | cut -c1-400

step "kernel JIT: cold then warm"
rm -rf "$M2T_KERNEL_CACHE"
"$bin/trainer" bench --jit --json >"$out/jit-cold.json" 2>"$out/jit-cold.log"; cat "$out/jit-cold.json"
"$bin/trainer" bench --jit --json >"$out/jit-warm.json" 2>"$out/jit-warm.log"; cat "$out/jit-warm.json"

p1=(--arch resnet50 --bs 128 --res 224 --precision bf16 --device cuda --channels-last)
if [ -n "${QUICK:-}" ]; then
    step "M2T step, engine vs PyTorch eager AMP channels_last, once each (QUICK)"
    TRAINER=$bin/trainer PYTHON=$py RUNS=1 SUMMARY=$out/p1-eager.json timeout "$(limit 150)" \
        bash "$root/benches/compare.sh" "${p1[@]}" --steps 5 >"$out/bench-eager.log" 2>&1
    echo "exit $?" >>"$out/bench-eager.log"
    tail -6 "$out/bench-eager.log"
else
    step "M2T step: engine vs PyTorch eager AMP channels_last (resnet50, bs 128, 224 px, bf16)"
    TRAINER=$bin/trainer PYTHON=$py RUNS=${RUNS:-2} SUMMARY=$out/p1-eager.json timeout "$(limit 200)" \
        bash "$root/benches/compare.sh" "${p1[@]}" --steps 10 >"$out/bench-eager.log" 2>&1
    echo "exit $?" >>"$out/bench-eager.log"
    tail -8 "$out/bench-eager.log"

    step "M2T step: engine with its step as a CUDA graph vs PyTorch eager AMP channels_last, once each"
    TRAINER=$bin/trainer PYTHON=$py RUNS=1 SUMMARY=$out/p1-graph.json timeout "$(limit 120)" \
        bash "$root/benches/compare.sh" "${p1[@]}" --cuda-graph --steps 10 >"$out/bench-graph.log" 2>&1
    echo "exit $?" >>"$out/bench-graph.log"
    tail -6 "$out/bench-graph.log"

    if [ -d "$bin/fashion-mnist" ]; then
        step "Fashion-MNIST pretrain (about 2 minutes) with kNN"
        timeout "$(limit 150)" "$bin/trainer" pretrain --data "$bin/fashion-mnist" --arch resnet18 --width 32 \
            --device cuda --precision bf16 --bs 256 --res 32 --steps 1000 --lr 0.1 --crop-min 0.2 \
            --out "$out/fashion-run" >"$out/pretrain.log" 2>&1
        echo "exit $?" >>"$out/pretrain.log"
        tail -8 "$out/pretrain.log"
    fi

    step "op benchmark: resnet50 convolutions (cuDNN algorithm, TFLOP/s) and fused batch norm (GB/s)"
    timeout "$(limit 90)" "$bin/trainer" bench --ops --device cuda --precision bf16 --steps 5 >"$out/ops.txt" 2>"$out/ops.log"
    echo "exit $?" >>"$out/ops.log"
    cut -c1-160 "$out/ops.txt" | head -40

    step "M2T step: engine vs torch.compile of the same step, once each"
    TRAINER=$bin/trainer PYTHON=$py RUNS=1 SUMMARY=$out/p1-compile.json timeout "$(limit 180)" \
        bash "$root/benches/compare.sh" "${p1[@]}" --compile --steps 10 >"$out/bench-compile.log" 2>&1
    echo "exit $?" >>"$out/bench-compile.log"
    tail -6 "$out/bench-compile.log"
fi

step "summary"
python3 - "$out" "$(( $(date +%s) - start ))" <<'PY' | tee "$out/summary.json"
import json, os, re, sys
out = sys.argv[1]
def text(name):
    try:
        return open(os.path.join(out, name)).read()
    except OSError:
        return ""
def load(name):
    try:
        return json.loads(text(name).strip().splitlines()[-1])
    except (IndexError, ValueError):
        return None
results = re.findall(r"test result: \w+\. (\d+) passed; (\d+) failed", text("parity.log"))
parity = [tuple(sum(int(r[i]) for r in results) for i in (0, 1))] if results else []
# A test that found no GPU passes and says "skipped"; it is not counted as run.
skipped = len(re.findall(r"^test \S+ \.\.\. skipped", text("parity.log"), re.M))
knn = re.findall(r"kNN accuracy \(teacher, k=200\): ([0-9.]+)%", text("pretrain.log"))
summary = {
    "card": (text("gpu.txt").splitlines() or ["unknown"])[0],
    "parity": {"passed": int(parity[-1][0]) - skipped, "failed": int(parity[-1][1]), "skipped": skipped} if parity else None,
    "failed_tests": re.findall(r"^test (\S+) \.\.\. FAILED", text("parity.log"), re.M),
    "jit_cold": load("jit-cold.json"),
    "jit_warm": load("jit-warm.json"),
    "p1_eager": load("p1-eager.json"),
    "p1_graph": load("p1-graph.json"),
    "p1_compile": load("p1-compile.json"),
    "fashion_mnist_knn_percent": float(knn[-1]) if knn else None,
    "seconds": int(sys.argv[2]),
}
print(json.dumps(summary, indent=1))
PY
step "done"
