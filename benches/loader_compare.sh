#!/usr/bin/env bash
# The input pipeline alone, side by side: torchvision's DataLoader on a JPEG
# folder (benches/torch_loader.py) against `trainer bench --loader` on the same
# folder and on a pack of it, with the same transforms, workers, batch size
# and resolution. Runs each configuration RUNS times, alternating, and prints
# the medians of pairs/s and their ratios to torchvision's.
#
# Usage: benches/loader_compare.sh [--res 224] [--bs 64] [--workers 2] [--batches 20]
# Environment:
#   DATA     the ImageFolder [default: benches/photos, built by
#            benches/make_photos.py (needs apt-get download and Pillow) if missing]
#   TRAINER  engine binary [default: target/release/trainer of this repository]
#   PYTHON   Python with torch and torchvision [default: python3]
#   RUNS     runs of each [default: 3]
#   BLUR     torchvision side's blur: pil (ImageFilter, the default and the
#            stronger baseline) or torchvision (its GaussianBlur, ~40x slower)
#
# Example: PYTHON=/opt/torchenv/bin/python bash benches/loader_compare.sh --workers 2
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TRAINER=${TRAINER:-$root/target/release/trainer}
PYTHON=${PYTHON:-python3}
RUNS=${RUNS:-3}
BLUR=${BLUR:-pil}
DATA=${DATA:-$root/benches/photos}

res=224 bs=64 workers=2 batches=20
while [ $# -gt 0 ]; do
    case $1 in
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
        --res) res=$2; shift ;;
        --bs) bs=$2; shift ;;
        --workers) workers=$2; shift ;;
        --batches) batches=$2; shift ;;
        *) echo "loader_compare.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

[ -x "$TRAINER" ] || { echo "loader_compare.sh: no trainer at $TRAINER (cargo build --release -p trainer)" >&2; exit 1; }
[ -d "$DATA" ] || "$PYTHON" "$root/benches/make_photos.py" "$DATA"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pack=$work/photos.m2tpack
"$TRAINER" pack --data "$DATA" --out "$pack" >&2

common=(--res "$res" --bs "$bs" --workers "$workers" --batches "$batches")
for run in $(seq "$RUNS"); do
    echo "== run $run of $RUNS" >&2
    "$PYTHON" "$root/benches/torch_loader.py" --data "$DATA" "${common[@]}" --blur "$BLUR" --json \
        | sed 's/^/torchvision-folder /' >> "$work/results"
    for augment in host device; do
        for source in folder pack; do
            data=$DATA
            [ "$source" = pack ] && data=$pack
            "$TRAINER" bench --loader --data "$data" --augment "$augment" --device cpu "${common[@]}" --json \
                | sed "s/^/trainer-$augment-$source /" >> "$work/results"
        done
    done
done

python3 - "$work/results" <<'EOF'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name, js = line.split(" ", 1)
    runs.setdefault(name, []).append(json.loads(js))
base = statistics.median(r["pairs_per_s"] for r in runs["torchvision-folder"])
first = runs["torchvision-folder"][0]
print(f"{first['res']} px, bs {first['bs']}, {first['workers']} workers, torchvision with "
      f"{first['blur']} blur, median of {len(runs['torchvision-folder'])} runs")
print(f"{'configuration':<24} {'pairs/s':>9} {'per worker':>11} {'vs torchvision':>15}  worker ms per pair")
for name, rs in runs.items():
    pairs = statistics.median(r["pairs_per_s"] for r in rs)
    split = ""
    if "ms_per_pair" in rs[0]:
        keys = [k for k in ("read", "decode", "draw", "augment", "assemble") if k in rs[0]["ms_per_pair"]]
        split = ", ".join(f"{k} {statistics.median(r['ms_per_pair'][k] for r in rs):.2f}" for k in keys)
    print(f"{name:<24} {pairs:>9.1f} {pairs / first['workers']:>11.1f} {pairs / base:>14.2f}x  {split}")
EOF
