#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, and the whole test suite
# (tests build with optimisation on; see [profile.test] in Cargo.toml).
set -euo pipefail
cd "$(dirname "$0")/.."

# The end-to-end tests read the real Fashion-MNIST that Debian packages.
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    echo "== installing dataset-fashion-mnist"
    sudo_if_needed=""
    [ "$(id -u)" -eq 0 ] || sudo_if_needed="sudo"
    $sudo_if_needed apt-get update -qq
    $sudo_if_needed apt-get install -y -qq dataset-fashion-mnist
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace
