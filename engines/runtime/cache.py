"""Where the runtimes keep what they build on this machine, and under which key.

TensorRT engines are never shipped (ARCHITECTURE.md "Formats"): each is built on the
target device from model.onnx and serialized under `cache_dir("tensorrt")`, keyed by
everything that makes a serialized engine invalid elsewhere: the ONNX sha256, the GPU
name and compute capability, the TensorRT version and the precision. The backend
choice's CPU speed probe is cached the same way under `cache_dir("backend-probe")`.

The root is the user cache dir (platformdirs, "mbdl-studio"), or $MBDL_CACHE_DIR when
set (tests, read-only home folders, a shared cache on a fleet of Jetsons).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import platformdirs

ENV = "MBDL_CACHE_DIR"


def cache_root() -> Path:
    """$MBDL_CACHE_DIR, or the user cache dir of mbdl-studio."""
    return Path(os.environ.get(ENV) or platformdirs.user_cache_dir("mbdl-studio", appauthor=False))


def cache_dir(kind: str) -> Path:
    """The folder of one kind of cached object ("tensorrt", "backend-probe", ...), created."""
    path = cache_root() / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_key(*parts: str) -> str:
    """A file-name-safe key: the readable parts joined, plus a short hash of all of them
    (so that two GPU names that sanitize alike still get different files)."""
    readable = "-".join(re.sub(r"[^A-Za-z0-9.]+", "_", p).strip("_") for p in parts)
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]
    return f"{readable[:150]}-{digest}"


def engine_key(
    onnx_sha256: str, gpu_name: str, compute_capability: tuple[int, int], trt_version: str, precision: str
) -> str:
    """The cache key of a serialized TensorRT engine (ARCHITECTURE.md "Formats")."""
    return cache_key(
        onnx_sha256[:16],
        gpu_name,
        f"sm{compute_capability[0]}{compute_capability[1]}",
        f"trt{trt_version}",
        precision,
    )
