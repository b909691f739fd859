#!/usr/bin/env bash
# Install MBDL Studio on a Jetson (JetPack 6: L4T R36, Python 3.10, CUDA 12.6, TensorRT 10.3) without
# Docker, as the systemd service `mbdl` (headless `mbdl run`, rotating recordings, a health line in
# the journal). Run from a checkout, as root:
#   sudo packaging/jetson/install.sh [PREFIX]         (PREFIX default /opt/mbdl)
# Then: edit /etc/mbdl/mbdl.env and /etc/mbdl/session.toml; systemctl enable --now mbdl;
# journalctl -u mbdl -f.  `mbdl doctor` (as the mbdl user) says what the device has and lacks.
set -euo pipefail
prefix=${1:-/opt/mbdl}
src=$(cd "$(dirname "$0")/../.." && pwd)
index=${JETSON_INDEX:-https://pypi.jetson-ai-lab.io/jp6/cu126}
torch_version=${TORCH_VERSION:-2.8.0}
ort_version=${ORT_GPU_VERSION:-1.23.0}

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (it creates a user, /etc/mbdl and a systemd unit)" >&2
  exit 1
fi
if [ ! -f /etc/nv_tegra_release ]; then
  echo "install.sh: not a Jetson (no /etc/nv_tegra_release); on a desktop use pip install 'mbdl-studio[gui]'" >&2
  exit 1
fi
if ! grep -q "^# R36 " /etc/nv_tegra_release; then
  echo "install.sh: $(head -1 /etc/nv_tegra_release): JetPack 6 (L4T R36) is needed" >&2
  exit 1
fi
python3 -c "import tensorrt" 2>/dev/null \
  || echo "install.sh: warning: no system TensorRT (sudo apt install nvidia-tensorrt python3-libnvinfer)" >&2
python3 -c "import venv" 2>/dev/null || apt-get install -y --no-install-recommends python3-venv

# the venv sees the system TensorRT; NVIDIA's torch and onnxruntime-gpu, then the rest from PyPI
python3 -m venv --system-site-packages "$prefix/venv"
"$prefix/venv/bin/pip" install --index-url "$index" "torch==$torch_version" "onnxruntime-gpu==$ort_version"
python3 "$src/packaging/deps.py" --without torch onnxruntime > "$prefix/requirements.txt"
"$prefix/venv/bin/pip" install -r "$prefix/requirements.txt"
"$prefix/venv/bin/pip" install --no-deps "$src"

id mbdl >/dev/null 2>&1 || useradd --system --home-dir /var/lib/mbdl --shell /usr/sbin/nologin \
  --groups video,dialout mbdl
install -d -m 755 /etc/mbdl
[ -f /etc/mbdl/mbdl.env ] || install -m 644 "$src/packaging/jetson/mbdl.env" /etc/mbdl/mbdl.env
# the session it runs: the shipped edge config when there is one, else the default session
if [ ! -f /etc/mbdl/session.toml ]; then
  if [ -f "$src/mbdl_app/sessions/edge.toml" ]; then
    install -m 644 "$src/mbdl_app/sessions/edge.toml" /etc/mbdl/session.toml
  else
    install -m 644 "$src/mbdl_app/default_session.toml" /etc/mbdl/session.toml
  fi
fi
sed "s#/opt/mbdl/venv#$prefix/venv#g" "$src/packaging/jetson/mbdl.service" > /etc/systemd/system/mbdl.service
chmod 644 /etc/systemd/system/mbdl.service
systemctl daemon-reload
"$prefix/venv/bin/mbdl" doctor || true
echo "installed in $prefix; start with: systemctl enable --now mbdl; follow with: journalctl -u mbdl -f"
