"""`mbdl doctor`: what this machine offers MBDL Studio, in one report.

Versions (Python, torch, onnx, ONNX Runtime and its execution providers, TensorRT or
why not), the GPUs torch sees, which engine backends can run here, the cache dir (built
TensorRT engines, backend probes), whether Qt can open a window, and the devices found.

The platform section (`platform()`) says what a deployment target has: a Jetson's L4T release and
JetPack version (/etc/nv_tegra_release), the NVIDIA driver, the CUDA runtime, TensorRT's library,
ONNX Runtime's GPU providers, torch or not; `missing()` turns each thing absent into one line with
its fix (on a machine without a GPU: that the CPU engines run and the GPU ones cannot).

Qt is probed in a subprocess (`python -c` creating a QApplication and showing a widget,
with a timeout): mbdl_app never imports Qt (ARCHITECTURE.md layers) and a broken
display must not hang or crash the doctor. "offscreen"/"minimal" platforms draw no
window on a screen, so `window` is false there even when Qt itself works.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

QT_TIMEOUT_S = 20.0
HEADLESS_PLATFORMS = ("offscreen", "minimal", "vnc")
_QT_PROBE = (
    "from PySide6.QtWidgets import QApplication, QWidget\n"
    "app = QApplication([])\n"
    "w = QWidget(); w.resize(64, 64); w.show(); app.processEvents()\n"
    "print(QApplication.platformName())\n"
)


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except ImportError:
        return None


def versions() -> dict[str, Any]:
    """Python and the runtime libraries (None where not installed), ONNX Runtime's providers."""
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        **{m: _version(m) for m in ("mbdl_app", "torch", "onnx", "onnxruntime")},
    }
    try:
        import onnxruntime

        out["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        out["onnxruntime_providers"] = []
    from engines.runtime.tensorrt_runtime import available

    out["tensorrt"] = _version("tensorrt")
    ok, why = available()
    if not ok:
        out["tensorrt_missing"] = why
    return out


def gpus() -> list[dict[str, Any]]:
    """The CUDA devices torch sees: index, name, compute capability, memory (GiB); [] without torch."""
    if importlib.util.find_spec("torch") is None:
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    found = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        found.append(
            {
                "index": i,
                "name": p.name,
                "compute_capability": f"{p.major}.{p.minor}",
                "memory_gib": round(p.total_memory / 2**30, 1),
            }
        )
    return found


def qt_window(timeout: float = QT_TIMEOUT_S) -> dict[str, Any]:
    """Whether Qt opens a window here: {"qt", "platform", "window", "error"} from a subprocess."""
    # a frozen app (packaging/desktop) has no `python -c`: its entry script runs the probe on MBDL_QT_PROBE
    frozen = getattr(sys, "frozen", False)
    cmd = [sys.executable] if frozen else [sys.executable, "-c", _QT_PROBE]
    env = {**os.environ, "MBDL_QT_PROBE": "1"} if frozen else None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    except subprocess.TimeoutExpired:
        return {"qt": False, "platform": None, "window": False, "error": f"no answer within {timeout:g} s"}
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        # Qt's first line says what failed (e.g. no display); later ones list plugins or a traceback
        return {
            "qt": False,
            "platform": None,
            "window": False,
            "error": lines[0] if lines else f"exit code {done.returncode}",
        }
    name = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    return {
        "qt": True,
        "platform": name,
        "window": name not in HEADLESS_PLATFORMS,
        "error": None if name not in HEADLESS_PLATFORMS else f"platform {name!r} draws no window on a screen",
    }


# NVIDIA's pip index for JetPack 6 / CUDA 12.6 (jetson-containers' docs; the .dev one was retired in 2025)
JETSON_INDEX = "https://pypi.jetson-ai-lab.io/jp6/cu126"
TEGRA_RELEASE = Path("/etc/nv_tegra_release")
NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")
# L4T release -> JetPack (NVIDIA's JetPack archive); the image and install.sh target JetPack 6
JETPACK_BY_L4T = {"36.4.4": "6.2.1", "36.4.3": "6.2", "36.4": "6.1", "36.3": "6.0", "36.2": "6.0 DP",
                  "35.6": "5.1.4", "35.5": "5.1.3", "35.4": "5.1.2", "35.3": "5.1.1", "35.2": "5.1",
                  "35.1": "5.0.2", "32.7": "4.6.x"}
_TEGRA = re.compile(r"#\s*R(?P<major>\d+)\s*\(release\),\s*REVISION:\s*(?P<rev>[\d.]+)(?P<rest>.*)")


def jetson(release_file: Path = TEGRA_RELEASE) -> dict[str, Any]:
    """{"jetson", "l4t", "jetpack", "board", "error"} from the L4T release file (absent: not a Jetson)."""
    if not release_file.exists():
        return {"jetson": False, "l4t": None, "jetpack": None, "board": None,
                "error": f"not a Jetson (no {release_file})"}
    text = release_file.read_text(errors="replace").strip()
    m = _TEGRA.match(text.splitlines()[0] if text else "")
    if not m:
        return {"jetson": True, "l4t": None, "jetpack": None, "board": None,
                "error": f"{release_file}: unrecognized first line {text[:60]!r}"}
    l4t = f"{m['major']}.{m['rev']}"
    jp = next((v for k, v in JETPACK_BY_L4T.items() if l4t == k or l4t.startswith(k + ".")), None)
    board = re.search(r"BOARD:\s*([^,]+)", m["rest"])
    return {"jetson": True, "l4t": l4t, "jetpack": jp, "board": board[1].strip() if board else None,
            "error": None if jp else f"L4T {l4t}: JetPack version not known to this doctor"}


def _cudart_version() -> tuple[str | None, str | None]:
    """The CUDA runtime this process can load (version, library), via cudaRuntimeGetVersion."""
    candidates = [ctypes.util.find_library("cudart"), "libcudart.so.12", "libcudart.so",
                  "/usr/local/cuda/lib64/libcudart.so"]
    for name in filter(None, candidates):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        v = ctypes.c_int(0)
        if lib.cudaRuntimeGetVersion(ctypes.byref(v)) == 0 and v.value:
            return f"{v.value // 1000}.{(v.value % 1000) // 10}", name
    return None, None


def cuda() -> dict[str, Any]:
    """The NVIDIA driver (desktop GPUs), the CUDA toolkit on disk, the CUDA runtime that loads."""
    driver = NVIDIA_DRIVER.read_text().splitlines()[0].strip() if NVIDIA_DRIVER.exists() else None
    toolkit = None
    version_json = Path("/usr/local/cuda/version.json")
    if version_json.exists():
        try:
            toolkit = json.loads(version_json.read_text())["cuda"]["version"]
        except (ValueError, KeyError):
            toolkit = "unreadable"
    runtime, lib = _cudart_version()
    return {"driver": driver, "toolkit": toolkit, "runtime": runtime, "runtime_library": lib}


def platform_report(release_file: Path = TEGRA_RELEASE) -> dict[str, Any]:
    """What a deployment target has: Jetson/JetPack, CUDA, TensorRT, ORT's providers, torch."""
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    except ImportError:
        providers = []
    trt_lib = ctypes.util.find_library("nvinfer")
    return {
        "jetson": jetson(release_file),
        "cuda": cuda(),
        "tensorrt_python": _version("tensorrt") if importlib.util.find_spec("tensorrt") else None,
        "tensorrt_library": trt_lib,
        "ort_providers": providers,
        "torch": _version("torch") if importlib.util.find_spec("torch") else None,
    }


def missing(p: dict[str, Any]) -> list[dict[str, str]]:
    """Each thing the platform lacks for MBDL Studio's engines, with its one-line fix."""
    out: list[dict[str, str]] = []
    j, c = p["jetson"], p["cuda"]
    on_jetson = j["jetson"]
    gpu = on_jetson or c["driver"] is not None

    def need(what: str, fix: str) -> None:
        out.append({"what": what, "fix": fix})

    if on_jetson and j["l4t"] and not j["l4t"].startswith("36."):
        need(f"JetPack 6 (this Jetson runs L4T {j['l4t']}, JetPack {j['jetpack'] or '?'})",
             "reflash with JetPack 6 (SDK Manager); the image and install.sh target L4T R36 / CUDA 12.6")
    if not gpu:
        need("an NVIDIA GPU (no /proc/driver/nvidia, not a Jetson)",
             "none for the CPU engines (ONNX Runtime CPU runs here); CUDA/TensorRT backends need an "
             "NVIDIA GPU with its driver")
    else:
        if c["runtime"] is None:
            need("the CUDA runtime (libcudart)",
                 "sudo apt install nvidia-jetpack" if on_jetson else
                 "pip install nvidia-cuda-runtime-cu12, or install the CUDA 12 toolkit")
        if "CUDAExecutionProvider" not in p["ort_providers"]:
            need("ONNX Runtime's CUDA provider (onnxruntime is the CPU build)",
                 f"pip uninstall -y onnxruntime && pip install --extra-index-url {JETSON_INDEX} "
                 "onnxruntime-gpu" if on_jetson else
                 "pip uninstall -y onnxruntime && pip install onnxruntime-gpu")
        if p["tensorrt_python"] is None or p["tensorrt_library"] is None:
            need("TensorRT (python bindings and libnvinfer)",
                 "sudo apt install nvidia-tensorrt python3-libnvinfer, venv with --system-site-packages"
                 if on_jetson else "pip install 'mbdl-studio[tensorrt]'")
    if p["torch"] is None:
        need("torch (for `mbdl train` and the torch backend; the ONNX Runtime engines run without it)",
             f"pip install --extra-index-url {JETSON_INDEX} torch" if on_jetson else
             "pip install 'mbdl-studio[torch]'")
    return out


def collect(probe_qt: bool = True) -> dict[str, Any]:
    """The whole report (JSON-serializable)."""
    from drivers.discovery import list_devices
    from engines.runtime.backends import available_backends
    from engines.runtime.cache import cache_root

    plat = platform_report()
    return {
        "versions": versions(),
        "platform": plat,
        "missing": missing(plat),
        "gpus": gpus(),
        "backends": {k: {"available": ok, "detail": why} for k, (ok, why) in available_backends().items()},
        "cache_dir": str(cache_root()),
        "qt": qt_window()
        if probe_qt
        else {"qt": None, "platform": None, "window": None, "error": "not probed"},
        "devices": list_devices(),
    }


def render(report: dict[str, Any]) -> str:
    """The report as plain aligned text."""
    v = report["versions"]
    lines = [f"python        {v['python']} ({v['platform']})"]
    for m in ("mbdl_app", "torch", "onnx", "onnxruntime"):
        lines.append(f"{m:<13} {v[m] or 'not installed'}")
    lines.append(f"ort providers {', '.join(v['onnxruntime_providers']) or 'none'}")
    if v["tensorrt"] is None:
        lines.append(f"tensorrt      not available: {v['tensorrt_missing']}")
    else:
        missing = f" (cannot run: {v['tensorrt_missing']})" if "tensorrt_missing" in v else ""
        lines.append(f"tensorrt      {v['tensorrt']}{missing}")
    gpu_lines = [
        f"{g['index']}: {g['name']} (sm {g['compute_capability']}, {g['memory_gib']} GiB)"
        for g in report["gpus"]
    ]
    lines.append(f"gpus          {'; '.join(gpu_lines) or 'none (torch sees no CUDA device)'}")
    lines.append("backends")
    for k, b in report["backends"].items():
        lines.append(f"  {k:<16} {'yes' if b['available'] else 'no ':<4} {b['detail']}")
    lines.append(f"cache dir     {report['cache_dir']}")
    q = report["qt"]
    window = "yes" if q["window"] else "no"
    lines.append(
        f"qt window     {window} (platform {q['platform']}){'; ' + q['error'] if q['error'] else ''}"
    )
    p = report["platform"]
    j, c = p["jetson"], p["cuda"]
    lines.append("jetson        " + (f"L4T R{j['l4t']} = JetPack {j['jetpack'] or '?'}"
                                     + (f" ({j['board']})" if j["board"] else "")
                                     if j["l4t"] else j["error"]))
    lines.append(f"nvidia driver {c['driver'] or 'none'}")
    lines.append(f"cuda          runtime {c['runtime'] or 'not found'}"
                 + (f" ({c['runtime_library']})" if c["runtime_library"] else "")
                 + f", toolkit {c['toolkit'] or 'not found'}")
    lines.append(f"tensorrt lib  {p['tensorrt_library'] or 'libnvinfer not found'}")
    gpu_eps = [e for e in p["ort_providers"] if e in ("CUDAExecutionProvider", "TensorrtExecutionProvider")]
    lines.append(f"ort gpu       {', '.join(gpu_eps) or 'none (CPU build)'}")
    lines.append(f"missing       {len(report['missing']) or 'nothing'}")
    for m in report["missing"]:
        lines.append(f"  - {m['what']}")
        lines.append(f"      fix: {m['fix']}")
    devices = report["devices"]
    lines.append(f"devices       {len(devices)} found")
    for d in devices:
        lines.append(
            f"  {d['kind']:<8} {d['uri']:<24} {'opens' if d['opens'] else 'does not open'}"
            f"{': ' + str(d.get('error')) if d.get('error') else ''}"
        )
    return "\n".join(lines)
