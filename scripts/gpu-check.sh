#!/usr/bin/env bash
# One prepared run on a GPU machine (no Rust toolchain, no network there).
#
#   scripts/gpu-check.sh --prepare    here: builds the trainer and the GPU test
#                                     executables into gpu-bin/ (git-ignored,
#                                     stripped: name it in the device tool's
#                                     `carry`)
#   scripts/gpu-check.sh OUT          on the GPU machine: runs the checks and
#                                     writes OUT/summary.json and OUT/logs.tgz
#   scripts/gpu-check.sh --self-test  here: the summariser on canned logs (a
#                                     crash, a time-out, a failing test, a run
#                                     cut short, every CUDA test skipped)
#
# The run, in order of priority, each step under `timeout -k 10` and cut to
# what is left of DEADLINE seconds (default 420; set it below a wrapper's own
# limit): nvidia-smi; a one-line PyTorch convolution as a control (a broken
# machine image is then told apart from a broken loader); `trainer info
# --check` (the CPU, the emulator and each GPU: convolutions, cuBLAS, every
# kernel family); the CUDA parity tests and the GPU graph tests; the
# one-rank NCCL tests (a real M2T step through NCCL's all-reduce equals the
# step without it, bit for bit; a missing rank ends NCCL's set-up); the kernel
# JIT cold and warm; `trainer bench` (resnet50, bs 128, 224 px, bf16) beside
# PyTorch eager AMP channels_last, eager, as a CUDA graph and with
# --deterministic; two --deterministic runs compared bit for bit; a short
# Fashion-MNIST pretrain with kNN, with --cuda-graph on and off (pairs/s and
# kNN accuracy of each); the op benchmark with the H200 roofline beside it;
# torch.compile.
#
# OUT receives summary.json, logs.tgz and check.txt only (the device machine
# returns at most 8 files): kernel caches, run folders and logs live in a
# temporary folder. summary.json is written by an EXIT trap, so a run cut
# short still says what it measured and which steps it did not reach; a test
# executable that crashed, timed out or printed no result counts as failed
# (scripts/gpu_summary.py holds the rules). Exit status: 0 when every step
# passed, 1 otherwise.
# QUICK=1 measures each side of the benchmark once and stops there.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$root/gpu-bin

case "${1:-}" in
--self-test)
    exec python3 "$root/scripts/gpu_summary.py" --self-test
    ;;
--prepare)
    set -e
    cd "$root"
    rm -rf "$bin" && mkdir -p "$bin"
    cargo build --release -p trainer
    cp target/release/trainer "$bin/"
    # Test executables: cargo names them with a hash; take them from its JSON.
    cargo test --no-run -p tests --test cuda_parity --test cuda_graph --test nccl --message-format=json 2>/dev/null |
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
    ;;
"" | -*)
    echo "usage: scripts/gpu-check.sh --prepare | --self-test | OUT_DIR" >&2
    exit 2
    ;;
esac

out=$1
mkdir -p "$out"
out=$(cd "$out" && pwd)
start=$(date +%s)
deadline=${DEADLINE:-420}
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
logs=$work/logs
mkdir -p "$logs"
export M2T_KERNEL_CACHE=$work/kernel-cache

# The steps in order; a step missing from steps.tsv at the end was not reached.
plan=(nvidia-smi torch-control check test-cuda_graph test-cuda_parity test-nccl jit-cold jit-warm p1-eager)
[ -n "${QUICK:-}" ] || plan+=(p1-graph p1-deterministic deterministic-repeat pretrain-graph pretrain-eager ops p1-compile)
printf '%s\n' "${plan[@]}" >"$logs/plan.txt"
printf 'deadline\t%s\n' "$deadline" >"$logs/meta.tsv"
: >"$logs/steps.tsv"

finish() {
    trap - EXIT INT TERM
    printf 'seconds\t%s\n' "$(( $(date +%s) - start ))" >>"$logs/meta.tsv"
    python3 "$root/scripts/gpu_summary.py" "$logs" "$out/summary.json" >/dev/null
    cp "$logs/check.log" "$out/check.txt" 2>/dev/null
    tar czf "$out/logs.tgz" -C "$work" logs
    rm -rf "$work"
    echo "== summary ($out/summary.json; logs in $out/logs.tgz)"
    python3 - "$out/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(s["card"])
print(s["verdict"])
sys.exit(0 if all(v["status"] == "ok" for v in s["steps"].values()) and not s["not_reached"] else 1)
PY
    local verdict=$?
    exit "${interrupted:-$verdict}"
}
trap finish EXIT
trap 'interrupted=143; exit' TERM
trap 'interrupted=130; exit' INT
if [ ! -x "$bin/trainer" ]; then
    # gpu-bin/ is git-ignored: the device tool needs it in `carry`.
    echo "gpu-bin/ is missing: run scripts/gpu-check.sh --prepare here, and carry gpu-bin" | tee "$logs/check.log" >&2
    exit 2
fi

# step NAME LIMIT COMMAND...: runs COMMAND under `timeout -k 10`, its limit cut
# to what is left before the deadline, output in NAME.log; records its exit
# code. With under 5 s left it is not started (and so reported not reached).
step() {
    local name=$1 limit=$2
    shift 2
    local left=$(( deadline - ($(date +%s) - start) ))
    if [ "$left" -lt 5 ]; then
        echo "== [$(( $(date +%s) - start )) s] $name: not started, the deadline is reached"
        return 1
    fi
    [ "$left" -lt "$limit" ] && limit=$left
    echo "== [$(( $(date +%s) - start )) s] $name (at most $limit s)"
    local t0=$(date +%s)
    timeout -k 10 "$limit" "$@" >"$logs/$name.log" 2>&1
    local code=$?
    printf '%s\t%s\t%s\n' "$name" "$code" "$(( $(date +%s) - t0 ))" >>"$logs/steps.tsv"
    tail -n "${TAIL:-4}" "$logs/$name.log" | cut -c1-200
    [ "$code" -eq 0 ] || echo "   exit $code"
    return "$code"
}

step nvidia-smi 20 nvidia-smi
printf 'card\t%s\n' "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)" >>"$logs/meta.tsv"

# The Python that holds PyTorch: $PYTHON, else python3 (on the GPU machines).
py=python3
for candidate in ${PYTHON:-} python3 /opt/torch/.venv/bin/python3; do
    if timeout 60 "$candidate" -c "import torch, torchvision" 2>/dev/null; then py=$candidate; break; fi
done
step torch-control 60 "$py" -c '
import json, torch
x = torch.randn(8, 16, 32, 32, device="cuda")
w = torch.randn(32, 16, 3, 3, device="cuda")
y = torch.nn.functional.conv2d(x, w, padding=1)
yb = torch.nn.functional.conv2d(x.bfloat16(), w.bfloat16(), padding=1)
err = ((yb.float() - y).abs().max() / y.abs().max()).item()
print(json.dumps({"torch": torch.__version__, "cudnn": torch.backends.cudnn.version(), "conv_f32_sum": y.sum().item(), "conv_bf16_rel_err": err}))
'

TAIL=40 step check 90 "$bin/trainer" info --check
# The test executables are embedders, not the trainer: they get the library
# path the trainer re-executes itself with (and nothing else does).
library_path=$(timeout 30 "$bin/trainer" info --library-path 2>/dev/null)
LD_LIBRARY_PATH=${library_path:-${LD_LIBRARY_PATH:-}} \
    step test-cuda_graph 90 "$bin/cuda_graph" on_cuda_ --test-threads=1 --nocapture
LD_LIBRARY_PATH=${library_path:-${LD_LIBRARY_PATH:-}} \
    step test-cuda_parity 150 "$bin/cuda_parity" --skip every_family_has_a_test --test-threads=1 --nocapture
LD_LIBRARY_PATH=${library_path:-${LD_LIBRARY_PATH:-}} \
    step test-nccl 90 "$bin/nccl" on_cuda_ --test-threads=1 --nocapture

rm -rf "$M2T_KERNEL_CACHE"
step jit-cold 60 "$bin/trainer" bench --jit --json
step jit-warm 30 "$bin/trainer" bench --jit --json

p1=(--arch resnet50 --bs 128 --res 224 --precision bf16 --device cuda --channels-last)
compare() { # compare NAME LIMIT RUNS FLAGS...
    local name=$1 limit=$2 runs=$3
    shift 3
    TRAINER=$bin/trainer PYTHON=$py RUNS=$runs SUMMARY=$logs/$name.json \
        step "$name" "$limit" bash "$root/benches/compare.sh" "${p1[@]}" "$@"
}
if [ -n "${QUICK:-}" ]; then
    compare p1-eager 150 1 --steps 5
    exit
fi
compare p1-eager 150 2 --steps 10
compare p1-graph 90 1 --cuda-graph --steps 10
compare p1-deterministic 90 1 --deterministic --steps 10
# Two runs of one --deterministic command must log the same losses, bit for bit.
repeat_deterministic() {
    local a
    for a in one two; do
        "$bin/trainer" pretrain --dataset synthetic --arch resnet18 --width 16 --res 32 --bs 64 \
            --device cuda --precision bf16 --steps 20 --log-every 1 --knn-every 0 --knn-memory 256 \
            --knn-queries 128 --deterministic --out "$work/deterministic-$a" || return 1
    done
    python3 - "$work/deterministic-one/metrics.jsonl" "$work/deterministic-two/metrics.jsonl" <<'PY'
import json, sys
a, b = ([json.loads(l)["loss"] for l in open(f)] for f in sys.argv[1:])
print(json.dumps({"steps": len(a), "identical": a == b, "losses_one": a[-3:], "losses_two": b[-3:]}))
sys.exit(0 if a == b and a else 1)
PY
}
export -f repeat_deterministic
export bin work
step deterministic-repeat 60 bash -c repeat_deterministic
# The same short Fashion-MNIST run replaying the captured step and launching
# every kernel; each log ends with the run's summary.json (pairs/s, kNN).
fashion_pretrain() {
    "$bin/trainer" pretrain --data "$bin/fashion-mnist" --arch resnet18 --width 32 \
        --device cuda --precision bf16 --bs 256 --res 32 --steps 600 --lr 0.1 --crop-min 0.2 \
        --cuda-graph "$1" --out "$work/fashion-$1" || return 1
    tr -d '\n' <"$work/fashion-$1/summary.json"
    echo
}
export -f fashion_pretrain
step pretrain-graph 100 bash -c 'fashion_pretrain on'
step pretrain-eager 100 bash -c 'fashion_pretrain off'
step ops 60 "$bin/trainer" bench --ops --device cuda --precision bf16 --steps 5 --card h200
compare p1-compile 150 1 --compile --steps 10
