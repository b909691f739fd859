#!/usr/bin/env bash
# Build the desktop bundle: a one-folder app of the torch-free runtime, OUT/dist/mbdl/mbdl.
#   packaging/desktop/build.sh [OUT]        (OUT default: packaging/desktop/build, git-ignored)
# A build venv (OUT/venv, or $MBDL_BUILD_VENV) gets PyInstaller, the project (no deps) and its
# runtime + GUI dependencies except torch; then PyInstaller runs packaging/desktop/mbdl.spec.
# Linux first; the same script runs on macOS (Git Bash/WSL on Windows: see packaging/README.md).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
out=$(mkdir -p "${1:-$repo/packaging/desktop/build}" && cd "${1:-$repo/packaging/desktop/build}" && pwd)
venv=${MBDL_BUILD_VENV:-$out/venv}
python=${PYTHON:-python3}
pyinstaller_version=${PYINSTALLER_VERSION:-6.22.*}

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
# the runtime and GUI dependencies named in pyproject.toml, torch left out
mapfile -t dep_list < <("$venv/bin/python" "$repo/packaging/deps.py" --extra gui --without torch)
"$venv/bin/python" -m pip install --quiet "pyinstaller==$pyinstaller_version" "${dep_list[@]}"
"$venv/bin/python" -m pip install --quiet --no-deps --force-reinstall "$repo"
if "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "build.sh: torch is installed in $venv; the bundle must be torch-free (the spec excludes it)" >&2
fi
cd "$out"
"$venv/bin/pyinstaller" --noconfirm --clean --log-level WARN \
  --workpath "$out/work" --distpath "$out/dist" "$repo/packaging/desktop/mbdl.spec"
# symbol tables stripped off every ELF file where that leaves its segments intact (libpython's debug
# info: ~18 MB of 23; auditwheel-patched libraries whose strip would misalign are left as they are),
# libraries two wheels carry byte for byte linked (packaging/desktop/shrink.py)
"$venv/bin/python" "$repo/packaging/desktop/shrink.py" "$out/dist/mbdl"
size=$(du -sm "$out/dist/mbdl" | cut -f1)
echo "build.sh: $out/dist/mbdl/mbdl (${size} MB); smoke test: packaging/desktop/smoke.py $out/dist/mbdl/mbdl"
