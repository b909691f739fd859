"""`engines.load(name)`: build a model-based solver or load a trained artifact by name.

Builders are registered as "module:function" and imported on first use, so loading
the EKF never imports the imaging stack. A builder takes keyword parameters only;
unknown parameters are an error naming the engine (a typo must not pass silently).

Trained artifacts need no entry: every folder `exported_models/<name>/` with a card.json
is the engine `name`, loaded (sha256-verified) by `engines.artifacts.load_artifact`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import exported_models
from engines.errors import BackendUnavailable, EngineError, UnknownEngineError

_BUILDERS: dict[str, str | Callable[..., Any]] = {
    "svd-filter": "engines.imaging.svd_filter:build",
    "rpca-fista": "engines.imaging.clutter:build_rpca_fista",
    "ulm-fista": "engines.imaging.ulm:build_ulm_fista",
    "ekf": "engines.tracking.kalman:build_ekf",
    "kf": "engines.tracking.kalman:build_kf",
    "ukf": "engines.tracking.kalman:build_ukf",
    "pf": "engines.tracking.particle:build_pf",
    "ista": "engines.imaging.ista:build_ista",
    "fista": "engines.imaging.ista:build_fista",
    "admm": "engines.imaging.admm:build_admm",
    "bcjr": "engines.comms.sum_product:build_bcjr",
    "viterbi": "engines.comms.sum_product:build_viterbi",
    "lfg-adaptive": "engines.comms.learned_factor_graph:build_adaptive",
    "sparcom": "engines.imaging.sparcom:build_sparcom",
    "smlm-fit": "engines.imaging.smlm_fit:build_smlm_fit",
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
        from engines.artifacts import load_artifact

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
    if entry is None:
        raise UnknownEngineError(f"unknown engine {name!r}; available: {', '.join(available())}")
    if callable(entry):
        return entry
    module, _, fn = entry.partition(":")
    return getattr(importlib.import_module(module), fn)


def accepted_params(name: str) -> set[str]:
    """Keyword parameters the builder of `name` understands."""
    sig = inspect.signature(_builder(name))
    return {
        p.name for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY and p.name != "backend"
    }


def load(name: str, backend: str = "auto", **overrides: Any):
    """Build engine `name` on `backend` ("auto" = the fastest available for it).

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
