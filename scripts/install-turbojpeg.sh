#!/usr/bin/env bash
# Installs Debian's libturbojpeg0-dev (libjpeg-turbo's TurboJPEG API) if it
# is missing: the trainer links it to decode JPEGs (with DCT-domain scaling).
set -euo pipefail
if ! pkg-config --exists libturbojpeg 2>/dev/null; then
    echo "== installing libturbojpeg0-dev and pkg-config"
    sudo_if_needed=""
    [ "$(id -u)" -eq 0 ] || sudo_if_needed="sudo"
    $sudo_if_needed apt-get update -qq
    $sudo_if_needed apt-get install -y -qq libturbojpeg0-dev pkg-config
fi
