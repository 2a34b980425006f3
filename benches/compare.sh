#!/usr/bin/env bash
# Engine vs PyTorch on one M2T workload: runs `trainer bench --json` and
# benches/torch_baseline.py --json alternately, RUNS times each, and prints the
# medians of step time and pairs/s and the ratio engine/pytorch.
#
# Usage: benches/compare.sh [workload flags]
#   Default workload P2 (CPU): --arch resnet18 --stem small --bs 32 --res 32
#                              --precision fp32 --device cpu --threads 2
#   P1 (GPU): benches/compare.sh --arch resnet50 --bs 128 --res 224 \
#                 --precision bf16 --device cuda --channels-last
# Flags for both: --arch --bs --res --stem --device --precision --steps --width
#   --proj-hidden --proj-out --channels. --threads N is RAYON_NUM_THREADS for the
#   engine and torch.set_num_threads for PyTorch (default 2 on the CPU, unset on
#   a GPU). --channels-last and --compile go to PyTorch only (the engine is NHWC
#   and has no compile mode); --cuda-graph (its step captured as a CUDA graph
#   and replayed) and --deterministic (cuDNN's deterministic algorithms only)
#   to the engine only.
# Environment:
#   TRAINER  engine binary [default: target/release/trainer of this repository]
#   PYTHON   Python with torch and torchvision [default: python3; on the dev
#            machine that is /opt/torchenv/bin/python]; the summary maths
#            use the system python3 (stdlib only)
#   RUNS     runs of each [default: 3]
#   SUMMARY  also write the medians and ratios to this file, as one JSON object
#
# Example: PYTHON=/opt/torchenv/bin/python RUNS=3 bash benches/compare.sh
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TRAINER=${TRAINER:-$root/target/release/trainer}
PYTHON=${PYTHON:-python3}
RUNS=${RUNS:-3}

die() { echo "compare.sh: $*" >&2; exit 1; }

arch=resnet18 bs=32 res=32 stem="" device=cpu precision=fp32 threads=""
common=() torch_only=() engine_only=()
while [ $# -gt 0 ]; do
    case $1 in
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
        --arch) arch=$2; shift ;;
        --bs) bs=$2; shift ;;
        --res) res=$2; shift ;;
        --stem) stem=$2; shift ;;
        --device) device=$2; shift ;;
        --precision) precision=$2; shift ;;
        --threads) threads=$2; shift ;;
        --steps|--width|--proj-hidden|--proj-out|--channels) common+=("$1" "$2"); shift ;;
        --channels-last|--compile) torch_only+=("$1") ;;
        --cuda-graph|--deterministic) engine_only+=("$1") ;;
        *) die "unknown flag $1 (see --help)" ;;
    esac
    shift
done
# The same rule as both tools' default, written out so the table shows it.
[ -n "$stem" ] || { [ "$res" -lt 128 ] && stem=small || stem=imagenet; }
[ -n "$threads" ] || [ "$device" != cpu ] || threads=2
common=(--arch "$arch" --bs "$bs" --res "$res" --stem "$stem" --device "$device" --precision "$precision" "${common[@]}")

[ -x "$TRAINER" ] || die "no engine binary at $TRAINER: run \`cargo build --release -p trainer\` in $root (or set TRAINER)"
"$PYTHON" -c 'import torch, torchvision' 2>/dev/null \
    || die "$PYTHON cannot import torch and torchvision: set PYTHON (on the dev machine PYTHON=/opt/torchenv/bin/python)"

engine_env=() torch_threads=()
if [ -n "$threads" ]; then
    engine_env=(RAYON_NUM_THREADS="$threads")
    torch_threads=(--threads "$threads")
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Runs one benchmark; appends its JSON line (the last stdout line) to $tmp/$1.
run() {
    local name=$1; shift
    if ! "$@" --json >"$tmp/out" 2>"$tmp/err"; then
        cat "$tmp/err" >&2
        die "$name failed: $*"
    fi
    tail -n 1 "$tmp/out" | tee -a "$tmp/$name" | sed "s/^/$name: /"
}

echo "workload: ${common[*]}${engine_only[*]:+ (engine: ${engine_only[*]})}${torch_only[*]:+ (pytorch: ${torch_only[*]})}, threads ${threads:-default}, $RUNS runs each, alternating"
for i in $(seq "$RUNS"); do
    run engine env "${engine_env[@]}" "$TRAINER" bench "${common[@]}" "${engine_only[@]}"
    run pytorch "$PYTHON" "$root/benches/torch_baseline.py" "${common[@]}" "${torch_threads[@]}" "${torch_only[@]}"
done

python3 - "$tmp/engine" "$tmp/pytorch" "${SUMMARY:-}" <<'EOF'
import json
import statistics
import sys

rows = {}
for name, path in zip(("engine", "pytorch"), sys.argv[1:3]):
    runs = [json.loads(line) for line in open(path)]
    first = runs[0]
    label = f"{first['framework']} {first['mode']}" if "framework" in first else "engine"
    if first.get("cuda_graph"):
        label += " CUDA graph"
    if first.get("channels_last"):
        label += " NHWC"
    rows[name] = {
        "label": label,
        "device": first["device"],
        "ms": statistics.median(r["step_ms_median"] for r in runs),
        "pps": statistics.median(r["pairs_per_s"] for r in runs),
        "all": " ".join(f"{r['pairs_per_s']:.2f}" for r in runs),
        "mem": max(r["peak_mem_mb"] for r in runs),
    }
print()
print(f"{'':32} {'step ms':>10} {'pairs/s':>10} {'peak MiB':>9}  device; pairs/s of each run")
for r in rows.values():
    print(f"{r['label']:32} {r['ms']:10.1f} {r['pps']:10.2f} {r['mem']:9.0f}  {r['device']}; {r['all']}")
ratio = rows["engine"]["pps"] / rows["pytorch"]["pps"]
memory = rows["engine"]["mem"] / rows["pytorch"]["mem"]
print(f"ratio engine/pytorch (median pairs/s): {ratio:.3f}")
print(f"peak memory engine/pytorch: {memory:.3f}")
if sys.argv[3]:
    with open(sys.argv[3], "w") as f:
        json.dump({**rows, "throughput_ratio": ratio, "peak_memory_ratio": memory}, f)
        f.write("\n")
EOF
