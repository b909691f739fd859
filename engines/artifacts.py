"""Reading model artifacts: a folder with card.json and weights.safetensors (ARCHITECTURE.md "Formats").

The card says what the model is and how it was made and holds the sha256 of every other
file in the folder; `read_artifact` checks each one before loading anything. Weights are
safetensors: loading them cannot run code (no pickle). Writing artifacts is the training
stack's job (mbdl_app/training/artifact.py); engines only read them.

Torch-free: the weights are read as numpy (`Artifact.arrays`), so ONNX Runtime and TensorRT
engines load an artifact without torch (the runtime install, issue 18); `Artifact.weights`
(torch tensors, for the torch builders) imports torch on first use.

This module is the bottom of the engines' artifact stack: the runtimes (engines/runtime/) read
verified artifacts from here, and `engines.load.load_artifact` (above the runtimes) turns one
into an engine on a runtime.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors.numpy import load_file

from engines.errors import ArtifactError
from engines.optional_torch import require_torch

if TYPE_CHECKING:
    import torch

CARD = "card.json"
WEIGHTS = "weights.safetensors"
OPERATOR_KEY = "operator"  # the forward operator (e.g. a sparse-coding model's H), when the weights store one


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Artifact:
    """A verified artifact: its folder, card and weights (numpy arrays; torch tensors on demand)."""

    path: Path
    card: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @cached_property
    def weights(self) -> dict[str, torch.Tensor]:
        """The weights as CPU torch tensors (sharing memory with `arrays`); BackendUnavailable
        in one line when torch is not installed."""
        torch = require_torch(f"{self.card.get('name', self.path.name)} on torch")
        return {k: torch.from_numpy(v) for k, v in self.arrays.items()}

    @property
    def sha256(self) -> str:
        """The weights file's sha256: what a recording stores to identify the model."""
        return self.card["files"][WEIGHTS]

    def build_module(self, build: Callable[[], torch.nn.Module], what: str) -> torch.nn.Module:
        """`build()` (the card's architecture) with these weights loaded strictly; an ArtifactError
        naming card.json when it cannot be built, the weights file when they do not fit `what`."""
        spec = self.card.get("architecture") or {}
        try:
            module = build()
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{self.path / 'card.json'}: architecture {spec} "
                                f"cannot be built: {e}") from None
        try:
            module.load_state_dict(self.weights)
        except RuntimeError as e:
            raise ArtifactError(f"{self.path / WEIGHTS}: does not fit {what}: "
                                f"{str(e).splitlines()[0]}") from None
        return module


def read_artifact(directory: str | Path) -> Artifact:
    """Read an artifact folder, verifying the sha256 of every file its card lists.

    Raises ArtifactError naming the file: card missing or not JSON, a listed file missing,
    a sha256 mismatch, weights unreadable.
    """
    directory = Path(directory)
    card_path = directory / CARD
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ArtifactError(f"{card_path}: cannot read ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{card_path}: not valid JSON ({e})") from None
    files = card.get("files") if isinstance(card, dict) else None
    if not isinstance(files, dict) or WEIGHTS not in files:
        raise ArtifactError(f"{card_path}: lists no sha256 for {WEIGHTS}")
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{path}: missing (listed in {card_path})")
        actual = sha256_of(path)
        if actual != expected:
            raise ArtifactError(f"{path}: sha256 {actual} does not match {expected} in {card_path} "
                                "(file corrupted or replaced)")
    try:
        arrays = load_file(directory / WEIGHTS)
    except Exception as e:  # safetensors raises its own error type for malformed files
        raise ArtifactError(f"{directory / WEIGHTS}: not readable safetensors ({e})") from None
    return Artifact(directory, card, arrays)
