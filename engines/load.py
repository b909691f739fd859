"""`engines.load(name)`: build a model-based solver or load a trained artifact by name.

Builders are registered as "module:function" and imported on first use, so loading
the EKF never imports the imaging stack. A builder takes keyword parameters only;
unknown parameters are an error naming the engine (a typo must not pass silently).

Trained artifacts need no entry: every folder `exported_models/<name>/` with a card.json
is the engine `name`, loaded (sha256-verified) by `load_artifact`, which turns an artifact
into an engine by its card's task ("sparse-coding" -> `engines.sparse_models.engine_from_artifact`,
"tracking" -> `engines.tracking.learned.engine_from_artifact`, ...) or by its architecture where
one task has several loaders (`architecture.name` "deep-storm" -> `engines.imaging.deep_storm`).

Layers (import-linter contracts in pyproject.toml): engines.export (ONNX export) -> this module
(the engine loader) -> engines.runtime (torch / ONNX Runtime / TensorRT) -> engines.artifacts
(cards, sha256 checks, weights).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import exported_models
from engines.errors import ArtifactError, BackendUnavailable, EngineError, UnknownEngineError
from engines.optional_torch import require_torch, torch_installed

_BUILDERS: dict[str, str | Callable[..., Any]] = {
    "svd-filter": "engines.imaging.svd_filter:build",
    "rpca-fista": "engines.imaging.clutter:build_rpca_fista",
    "ulm-fista": "engines.imaging.ulm:build_ulm_fista",
    "ekf": "engines.tracking.lorenz_numpy:build_ekf",  # numpy without torch, else the torch EKF
    "kf": "engines.tracking.kalman:build_kf",
    "ukf": "engines.tracking.kalman:build_ukf",
    "pf": "engines.tracking.particle:build_pf",
    "ista": "engines.imaging.ista:build_ista",
    "fista": "engines.imaging.ista:build_fista",
    "admm": "engines.imaging.admm:build_admm",
    "bcjr": "engines.comms.sum_product:build_bcjr",
    "viterbi": "engines.comms.sum_product:build_viterbi",
    "lfg-adaptive": "engines.comms.adaptive_numpy:build_adaptive",  # numpy without torch, else torch
    "sparcom": "engines.imaging.sparcom:build_sparcom",
    "smlm-fit": "engines.imaging.smlm_fit:build_smlm_fit",
    "pnp-admm": "engines.imaging.pnp:build_pnp_admm",
    "pnp-hqs": "engines.imaging.pnp:build_pnp_hqs",
    "tv-admm": "engines.imaging.pnp:build_tv_admm",
}

BACKENDS = ("auto", "numpy", "torch", "onnxruntime", "tensorrt")


def _shipped_artifacts() -> dict[str, Any]:
    """Artifact folders in exported_models/, by name."""
    return {d.name: d for d in exported_models.artifact_dirs()}


def available() -> list[str]:
    """Names `load` accepts: the registered builders and the shipped artifacts."""
    return sorted(set(_BUILDERS) | set(_shipped_artifacts()))


def _artifact_builder(directory):
    def build(*, backend: str = "auto", precision: str = "fp32"):
        return load_artifact(directory, backend, precision=precision)

    return build


def register(name: str, builder: str | Callable[..., Any]) -> None:
    """Add an engine: `builder` is "module:function" or a callable taking keyword
    parameters (and `backend`) and returning an Engine or TrackerEngine."""
    _BUILDERS[name] = builder


def _builder(name: str):
    entry = _BUILDERS.get(name)
    if entry is None and name in _shipped_artifacts():
        return _artifact_builder(_shipped_artifacts()[name])
    if entry is None and ("/" in name or "\\" in name):  # an artifact folder by path (`mbdl calibrate`'s)
        if not (Path(name) / "card.json").is_file():
            raise UnknownEngineError(f"{name}: not an artifact folder (no card.json there)")
        return _artifact_builder(Path(name))
    if entry is None:
        raise UnknownEngineError(f"unknown engine {name!r}; available: {', '.join(available())}")
    if callable(entry):
        return entry
    module, _, fn = entry.partition(":")
    return getattr(_import(module, name), fn)


def _import(module: str, what: str):
    """importlib.import_module(module); TorchMissing naming `what` when it fails for want of torch
    (the runtime install has no torch: engines written in torch are then unavailable, in one line)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if not torch_installed():
            require_torch(what)
        raise


def accepted_params(name: str) -> set[str]:
    """Keyword parameters the builder of `name` understands."""
    sig = inspect.signature(_builder(name))
    return {
        p.name for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY and p.name != "backend"
    }


def load(name: str, backend: str = "auto", **overrides: Any):
    """Build engine `name` on `backend` ("auto" = the fastest available for it). `name` may also be
    the path of an artifact folder (one with a "/"), e.g. a model calibrated by `mbdl calibrate`.

    Raises UnknownEngineError for an unknown name, EngineError for an unknown or
    invalid parameter, BackendUnavailable when the backend cannot run it here.
    """
    if backend not in BACKENDS:
        raise BackendUnavailable(f"{name}: unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
    build = _builder(name)
    known = accepted_params(name)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise EngineError(
            f"{name}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    try:
        return build(backend=backend, **overrides)
    except (TypeError, ValueError) as e:
        raise EngineError(f"{name}: invalid parameters {overrides}: {e}") from e


# ---- trained artifacts: a verified folder -> an engine on a runtime ------------------------
_TASK_BUILDERS = {"sparse-coding": "engines.sparse_models:engine_from_artifact",
                  "tracking": "engines.tracking.learned:engine_from_artifact",
                  "control-estimator": "engines.control.kalmannet_cv:engine_from_artifact",
                  "clutter-suppression": "engines.imaging.clutter:engine_from_artifact",
                  "super-resolution": "engines.imaging.ulm:engine_from_artifact",
                  "symbol-detection": "engines.comms.learned:engine_from_artifact",
                  "denoising": "engines.imaging.dncnn:engine_from_artifact",
                  "generation": "engines.imaging.csgm:engine_from_artifact"}
# tasks whose engine is more than its exported graph: the runtime's engine of the graph is wrapped
# (a detector runs the trellis recursion around its likelihood network, on whichever runtime)
_TASK_WRAPPERS = {"symbol-detection": "engines.comms.detectors:detector_from_runtime",  # torch-free
                  "clutter-suppression": "engines.imaging.motion:from_artifact"}  # card motion_compensation
# architectures whose task's builder is not theirs (Deep-STORM is a super-resolution model, not ULM's)
_ARCHITECTURE_BUILDERS = {"deep-storm": "engines.imaging.deep_storm:engine_from_artifact",
                          "lsparcom": "engines.imaging.lsparcom:engine_from_artifact"}


def engine_tasks() -> list[str]:
    """The card tasks that load_artifact can turn into an engine."""
    return sorted(_TASK_BUILDERS)


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
    from engines.artifacts import CARD, OPERATOR_KEY, read_artifact
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
            built.append(getattr(_import(module, f"{art.path.name} on torch"), fn)(art, backend="torch"))
        return built[0]

    engine = build(art, backend, torch_engine, precision)
    if task in _TASK_WRAPPERS:
        wrapper, _, wrap = _TASK_WRAPPERS[task].partition(":")
        engine = getattr(_import(wrapper, f"{art.path.name} ({task})"), wrap)(art, engine)
    engine.card = art.card
    engine.artifact_sha256 = art.sha256
    if OPERATOR_KEY in art.arrays and not hasattr(engine, "operator"):
        engine.operator = art.arrays[OPERATOR_KEY].astype(np.float32)
    return engine
