#!/usr/bin/env bash
# The main job of this version: build in release and train a tiny CNN on the
# CPU through the engine's public API (tape, flat parameters, SGD, schedules).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release -p engine --example tiny_cnn
