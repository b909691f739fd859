#!/usr/bin/env bash
# Install MBDL Studio on a Jetson (JetPack 6) without Docker, as a systemd service.
# Usage: sudo packaging/jetson/install.sh [/opt/mbdl]
set -euo pipefail
prefix=${1:-/opt/mbdl}
src=$(cd "$(dirname "$0")/../.." && pwd)
python3 -m venv --system-site-packages "$prefix/venv"   # system tensorrt comes with JetPack
"$prefix/venv/bin/pip" install --extra-index-url "${TORCH_INDEX:-https://pypi.jetson-ai-lab.dev/jp6/cu126}" torch
"$prefix/venv/bin/pip" install "$src"
install -m 644 "$src/packaging/jetson/mbdl.service" /etc/systemd/system/mbdl.service
sed -i "s#/opt/mbdl#$prefix#g" /etc/systemd/system/mbdl.service
systemctl daemon-reload
echo "installed; start with: systemctl enable --now mbdl"
