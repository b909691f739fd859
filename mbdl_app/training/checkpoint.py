"""Training checkpoints: plain containers of tensors, saved atomically, loaded without pickle.

A checkpoint holds only tensors, numbers, strings, None and lists/tuples/dicts of them
(state dicts of the model, optimizer and scheduler; RNG states as tensors), so it loads
with `torch.load(..., weights_only=True)`: opening one cannot run code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mbdl_app.training.errors import TrainingError

FORMAT_VERSION = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` via a temporary file, so a crash never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format_version": FORMAT_VERSION, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; TrainingError naming the file otherwise."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # unpickling errors have no common base class
        raise TrainingError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise TrainingError(f"{path}: not a checkpoint of format version {FORMAT_VERSION}")
    return state
