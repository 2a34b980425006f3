#!/usr/bin/env bash
# The main job on a machine without a GPU: pretrain Momentum² Teacher on
# Fashion-MNIST on the CPU, then compare kNN accuracies on the test set of the
# trained teacher, the same network untrained, and raw pixels.
# The configuration is explained in the README ("The demo").
set -euo pipefail
cd "$(dirname "$0")/.."

data=/usr/share/datasets/fashion-mnist
bash scripts/install-fashion-mnist.sh
# JPEG decoding links libjpeg-turbo (Debian's libturbojpeg0-dev).
bash scripts/install-turbojpeg.sh

echo "== building (release)"
cargo build --release -q -p trainer
trainer=target/release/trainer

out=${DEMO_OUT:-runs/demo-$(date +%Y%m%d-%H%M%S)}
steps=${DEMO_STEPS:-1500}
# ResNet-18 layout at width 8 (small stem, 28 px), 512/128-wide heads.
model=(--arch resnet18 --width 8 --proj-hidden 512 --proj-out 128 --bs 128 --seed 0)
# kNN: memory = the first 10,000 training images, queries = all 10,000 test images.
knn=(--knn-every 0 --knn-memory 10000 --knn-queries 0)

echo "== pretraining $steps steps on the CPU (output in $out)"
start=$(date +%s)
"$trainer" "${model[@]}" "${knn[@]}" --lr 0.1 --crop-min 0.2 --steps "$steps" --out "$out/trained"
minutes=$(( ($(date +%s) - start + 59) / 60 ))

echo "== the same network, untrained"
"$trainer" "${model[@]}" "${knn[@]}" --steps 0 --out "$out/untrained" 2> "$out/untrained.log"

echo "== raw pixels"
raw=$("$trainer" knn --raw-pixels --data "$data" --memory 10000 --queries 0 | sed -n 's/.*: \([0-9.]*%\).*/\1/p')

acc() { sed -n 's/.*"knn_acc": \([0-9.]*\).*/\1/p' "$1/summary.json" | awk '{printf "%.2f%%", 100 * $1}'; }
echo
echo "kNN top-1 on the Fashion-MNIST test set (k=200, cosine, t=0.1; memory: first 10,000 training images)"
echo "  trained teacher ($steps steps, ~$minutes min): $(acc "$out/trained")"
echo "  untrained network:                 $(acc "$out/untrained")"
echo "  raw pixels:                        $raw"
