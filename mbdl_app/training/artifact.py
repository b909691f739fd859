"""Writing model artifacts: a folder with weights.safetensors, card.json and (later) model.onnx.

The card (ARCHITECTURE.md, "Formats") says what the model is and how it was made, and
holds the sha256 of every other file in the folder. Reading and verifying them lives in
engines (`engines.artifacts.read_artifact`, re-exported here), since engines load the
shipped artifacts and may not import mbdl_app. Weights are safetensors: loading them
cannot run code.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs
import safetensors
import torch
from safetensors.torch import save_file
from torch import nn

import mbdl_app
from engines.artifacts import CARD, WEIGHTS, Artifact, read_artifact, sha256_of
from mbdl_app.training.errors import TrainingError

__all__ = ["CARD", "CARD_FIELDS", "WEIGHTS", "Artifact", "cache_dir", "read_artifact", "sha256_of",
           "write_artifact"]

FORMAT_VERSION = 1
# what a recipe must say about its model; write_artifact adds files, versions, created
CARD_FIELDS = ("name", "task", "family", "architecture", "input", "output", "training", "metrics")


def cache_dir(kind: str) -> Path:
    """The user cache folder for `kind` ("artifacts": models trained for benchmarks but not
    shipped; "checkpoints": training checkpoints for `mbdl train --resume`)."""
    return Path(platformdirs.user_cache_dir("mbdl-studio", appauthor=False)) / kind


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (np.generic, torch.Tensor)) and obj.ndim == 0:
        return obj.item()
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return obj.tolist()
    if isinstance(obj, Path):
        return obj.as_posix()
    raise TypeError(f"{type(obj).__name__} is not JSON-serializable")


def write_artifact(directory: str | Path, model: nn.Module, card: dict[str, Any],
                   extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Save `model`'s state dict as weights.safetensors and write card.json into `directory`.

    `extra` tensors are stored in the same file beside the state dict, under keys that must
    not collide with it (e.g. the sensing matrix a sparse-coding model was trained for).

    `card` holds CARD_FIELDS: name, task, family, architecture (constructor kwargs),
    input/output (shapes, dtypes, normalization), training (recipe, data, seed, ...),
    metrics (on held-out data). Added here: `files` (sha256 of every file in the folder
    but the card, so write model.onnx before calling this), `versions`, `created`,
    `format_version`. Returns the folder.
    """
    missing = [k for k in CARD_FIELDS if k not in card]
    if missing:
        raise TrainingError(f"artifact card for {directory} lacks {', '.join(missing)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses tensors that share storage (tied weights)
    weights = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    clash = sorted(set(weights) & set(extra or {}))
    if clash:
        raise TrainingError(f"artifact {directory}: extra tensors {clash} collide with the state dict")
    weights.update({k: v.detach().cpu().clone().contiguous() for k, v in (extra or {}).items()})
    save_file(weights, directory / WEIGHTS, metadata={"format": "pt"})
    files = {p.relative_to(directory).as_posix(): sha256_of(p)
             for p in sorted(directory.rglob("*")) if p.is_file() and p.name != CARD}
    full = {
        "format_version": FORMAT_VERSION,
        **card,
        "files": files,
        "versions": {"app": mbdl_app.__version__, "torch": torch.__version__, "numpy": np.__version__,
                     "safetensors": safetensors.__version__, "python": platform.python_version()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        text = json.dumps(full, indent=2, default=_jsonable, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TrainingError(f"artifact card for {directory}: {e}") from None
    (directory / CARD).write_text(text + "\n", encoding="utf-8")
    return directory
