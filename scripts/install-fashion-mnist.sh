#!/usr/bin/env bash
# Installs Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)
# if it is missing; the demo and the end-to-end tests read it.
set -euo pipefail
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    echo "== installing dataset-fashion-mnist"
    sudo_if_needed=""
    [ "$(id -u)" -eq 0 ] || sudo_if_needed="sudo"
    $sudo_if_needed apt-get update -qq
    $sudo_if_needed apt-get install -y -qq dataset-fashion-mnist
fi
