#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, and the whole test suite
# (tests build with optimisation on; see [profile.test] in Cargo.toml).
set -euo pipefail
cd "$(dirname "$0")/.."

# The end-to-end tests read the real Fashion-MNIST that Debian packages.
bash scripts/install-fashion-mnist.sh
# The kernel compile test runs NVRTC on every CUDA kernel (no GPU needed).
bash scripts/install-nvrtc.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace
