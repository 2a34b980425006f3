#!/usr/bin/env bash
# The main job on a machine without a GPU: pretrain Momentum² Teacher on
# Fashion-MNIST on the CPU, then compare kNN accuracies on the test set of the
# trained teacher, the same network untrained, and raw pixels. Prints the wall
# time of each phase and the path of the training curves.
# The configuration is explained in the README ("The demo").
set -euo pipefail
cd "$(dirname "$0")/.."

data=/usr/share/datasets/fashion-mnist
bash scripts/install-fashion-mnist.sh
# JPEG decoding links libjpeg-turbo (Debian's libturbojpeg0-dev).
bash scripts/install-turbojpeg.sh

# Seconds since the epoch, to the millisecond.
now() { date +%s.%3N; }
# Wall time from $1 to now, e.g. "2m 05s".
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { s = b - a; printf "%dm %04.1fs", s / 60, s % 60 }'; }

echo "== building (release)"
start=$(now)
cargo build --release -q -p trainer
build_time=$(since "$start")
trainer=${CARGO_TARGET_DIR:-target}/release/trainer

out=${DEMO_OUT:-runs/demo-$(date +%Y%m%d-%H%M%S)}
steps=${DEMO_STEPS:-1000}
# ResNet-18 layout at width 8 (small stem, 28 px), 512/128-wide heads.
model=(--arch resnet18 --width 8 --proj-hidden 512 --proj-out 128 --bs 128 --seed 0)
# kNN at the end: memory = the first 10,000 training images, queries = all
# 10,000 test images. Every 250 steps (and at step 0) a smaller monitor:
# 5,000 memory and 1,000 query images, for the curve in curves.png.
knn=(--knn-every 0 --knn-memory 10000 --knn-queries 0)
monitor=(--knn-every-steps 250 --monitor-memory 5000 --monitor-queries 1000)

echo "== pretraining $steps steps on the CPU (output in $out)"
start=$(now)
"$trainer" "${model[@]}" "${knn[@]}" "${monitor[@]}" --lr 0.1 --crop-min 0.2 --steps "$steps" --out "$out/trained"
pretrain_time=$(since "$start")

echo "== evaluation: the same network untrained, and raw pixels"
start=$(now)
"$trainer" "${model[@]}" "${knn[@]}" --steps 0 --out "$out/untrained" 2> "$out/untrained.log"
raw=$("$trainer" knn --raw-pixels --data "$data" --memory 10000 --queries 0 | sed -n 's/.*: \([0-9.]*%\).*/\1/p')
eval_time=$(since "$start")

acc() { sed -n 's/.*"knn_acc": \([0-9.]*\).*/\1/p' "$1/summary.json" | awk '{printf "%.2f%%", 100 * $1}'; }
echo
echo "kNN top-1 on the Fashion-MNIST test set (k=200, cosine, t=0.1; memory: first 10,000 training images)"
echo "  trained teacher ($steps steps): $(acc "$out/trained")"
echo "  untrained network:          $(acc "$out/untrained")"
echo "  raw pixels:                 $raw"
echo
echo "wall time: build $build_time, pretraining $pretrain_time (kNN monitor and final kNN included), evaluation $eval_time"
echo "curves: $out/trained/curves.png"
