"""`mbdl doctor`: what this machine offers MBDL Studio, in one report.

Versions (Python, torch, onnx, ONNX Runtime and its execution providers, TensorRT or
why not), the GPUs torch sees, which engine backends can run here, the cache dir (built
TensorRT engines, backend probes), whether Qt can open a window, and the devices found.

Qt is probed in a subprocess (`python -c` creating a QApplication and showing a widget,
with a timeout): mbdl_app never imports Qt (ARCHITECTURE.md layers) and a broken
display must not hang or crash the doctor. "offscreen"/"minimal" platforms draw no
window on a screen, so `window` is false there even when Qt itself works.
"""

from __future__ import annotations

import importlib
import platform
import subprocess
import sys
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
    """The CUDA devices torch sees: index, name, compute capability, memory (GiB)."""
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
    try:
        done = subprocess.run(
            [sys.executable, "-c", _QT_PROBE], capture_output=True, text=True, timeout=timeout, check=False
        )
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


def collect(probe_qt: bool = True) -> dict[str, Any]:
    """The whole report (JSON-serializable)."""
    from drivers.discovery import list_devices
    from engines.runtime.backends import available_backends
    from engines.runtime.cache import cache_root

    return {
        "versions": versions(),
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
    devices = report["devices"]
    lines.append(f"devices       {len(devices)} found")
    for d in devices:
        lines.append(
            f"  {d['kind']:<8} {d['uri']:<24} {'opens' if d['opens'] else 'does not open'}"
            f"{': ' + str(d.get('error')) if d.get('error') else ''}"
        )
    return "\n".join(lines)
