"""Reading model artifacts: a folder with card.json and weights.safetensors (ARCHITECTURE.md "Formats").

The card says what the model is and how it was made and holds the sha256 of every other
file in the folder; `read_artifact` checks each one before loading anything. Weights are
safetensors: loading them cannot run code (no pickle). Writing artifacts is the training
stack's job (mbdl_app/training/artifact.py); engines only read them.

`load_artifact(directory)` turns a verified artifact into an engine, by its card's task:
"sparse-coding" -> `engines.sparse_models.engine_from_artifact`, "tracking" ->
`engines.tracking.learned.engine_from_artifact`, ...; or by its architecture where one task has
several loaders (`architecture.name` "deep-storm" -> `engines.imaging.deep_storm`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from engines.errors import ArtifactError

CARD = "card.json"
WEIGHTS = "weights.safetensors"
OPERATOR_KEY = "operator"  # the forward operator (e.g. a sparse-coding model's H), when the weights store one

_TASK_BUILDERS = {"sparse-coding": "engines.sparse_models:engine_from_artifact",
                  "tracking": "engines.tracking.learned:engine_from_artifact",
                  "clutter-suppression": "engines.imaging.clutter:engine_from_artifact",
                  "super-resolution": "engines.imaging.ulm:engine_from_artifact",
                  "symbol-detection": "engines.comms.learned:engine_from_artifact"}
# tasks whose engine is more than its exported graph: the runtime's engine of the graph is wrapped
# (a detector runs the trellis recursion around its likelihood network, on whichever runtime)
_TASK_WRAPPERS = {"symbol-detection": "engines.comms.learned:detector_from_runtime"}
# architectures whose task's builder is not theirs (Deep-STORM is a super-resolution model, not ULM's)
_ARCHITECTURE_BUILDERS = {"deep-storm": "engines.imaging.deep_storm:engine_from_artifact",
                          "lsparcom": "engines.imaging.lsparcom:engine_from_artifact"}


def engine_tasks() -> list[str]:
    """The card tasks that load_artifact can turn into an engine."""
    return sorted(_TASK_BUILDERS)


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Artifact:
    """A verified artifact: its folder, card and weights (CPU tensors)."""

    path: Path
    card: dict[str, Any]
    weights: dict[str, torch.Tensor]

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
        weights = load_file(directory / WEIGHTS)
    except Exception as e:  # safetensors raises its own error type for malformed files
        raise ArtifactError(f"{directory / WEIGHTS}: not readable safetensors ({e})") from None
    return Artifact(directory, card, weights)


def load_artifact(directory: str | Path, backend: str = "auto", precision: str = "fp32"):
    """The engine stored in an artifact folder, verified by sha256 (read_artifact).

    `backend`: "torch", "onnxruntime", "tensorrt" or "auto"; the torch engine is built by
    the card's `task`, the others from model.onnx (engines/runtime/backends.py, which
    also makes the "auto" choice); `precision` "fp16" applies to TensorRT. Every engine
    carries `card` and `artifact_sha256` (the weights' sha256, which recordings store), and
    one whose weights store an `operator` (e.g. a sparse-coding model's H) that operator as
    numpy. Raises ArtifactError for an unknown task or a card that does not describe a
    model this code can build, BackendUnavailable when the backend cannot run it here.
    """
    from engines.runtime.backends import build

    art = read_artifact(directory)
    task = art.card.get("task")
    architecture = (art.card.get("architecture") or {}).get("name")
    entry = _ARCHITECTURE_BUILDERS.get(architecture) or _TASK_BUILDERS.get(task)
    if entry is None:
        raise ArtifactError(f"{Path(directory) / CARD}: no engine for task {task!r}; "
                            f"known: {', '.join(sorted(_TASK_BUILDERS))}")
    module, _, fn = entry.partition(":")
    built: list[Any] = []

    def torch_engine():
        if not built:  # one torch engine per load, shared by the auto probe and a tracker's init_state
            built.append(getattr(importlib.import_module(module), fn)(art, backend="torch"))
        return built[0]

    engine = build(art, backend, torch_engine, precision)
    if task in _TASK_WRAPPERS:
        wrapper, _, wrap = _TASK_WRAPPERS[task].partition(":")
        engine = getattr(importlib.import_module(wrapper), wrap)(art, engine)
    engine.card = art.card
    engine.artifact_sha256 = art.sha256
    if OPERATOR_KEY in art.weights and not hasattr(engine, "operator"):
        engine.operator = art.weights[OPERATOR_KEY].to(torch.float32).numpy()
    return engine
