"""torch as an optional dependency: the runtime install (issue 18) has numpy and ONNX Runtime only.

Everything on the runtime path (artifacts, the ONNX Runtime / TensorRT engines, their trackers'
numpy state and gate, the numpy EKF) imports no torch; what needs torch asks `require_torch`,
which says in one line what needs it and how to install it.
"""

from __future__ import annotations

import importlib.util
import sys

from engines.errors import TorchMissing

TORCH_FIX = "pip install 'mbdl-studio[torch]'"


def torch_installed() -> bool:
    """Whether torch can be imported here, found without importing it."""
    if sys.modules.get("torch") is not None:
        return True
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def require_torch(what: str):
    """The torch module; TorchMissing "<what> needs torch: pip install ..." when it is not installed."""
    try:
        import torch
    except ImportError:
        raise TorchMissing(f"{what} needs torch, which is not installed: {TORCH_FIX}") from None
    return torch
