"""Contracts of the decision rules f: Engine (stateless, windowed) and TrackerEngine.

Threading: one session worker thread owns each engine instance and is the only
caller of `__call__` / `reset` / `step`; engines need not be thread-safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from engines.errors import EngineInputError

Family = Literal["model-based", "learned-optimizer", "unfolded", "dnn-aided", "black-box"]
FAMILIES: tuple[str, ...] = ("model-based", "learned-optimizer", "unfolded", "dnn-aided", "black-box")


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What an engine is and what it consumes.

    family: the point on the paper's spectrum (see FAMILIES).
    task: what it decides, e.g. "clutter-suppression" (output compared with the
      truth "bubbles"), "tracking" (truth "state").
    backend: the runtime executing it: "numpy", "torch", "onnxruntime", "tensorrt".
    window: frames per call for imaging engines (T); 1 for trackers and vector engines.
    in_shape / out_shape: one batch element, without the batch dimension; -1 = any size.
    n_params: trainable parameters (0 for model-based solvers).
    """

    name: str
    family: Family
    task: str
    backend: str
    window: int
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    n_params: int = 0


@runtime_checkable
class Engine(Protocol):
    """A stateless decision rule: batch in, batch out.

    Imaging engines: x float32 (N, T, C, H, W), T = info.window, returns
    (N, T_out, C_out, H_out, W_out) with T_out = 1 (the newest frame) or T.
    Vector engines: (N, m) -> (N, n). Raises EngineInputError on a bad shape or
    non-finite input; never returns NaN silently.
    """

    info: EngineInfo

    def __call__(self, x: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class Estimate:
    """A tracker's filtered estimate: mean (N, n), cov (N, n, n) or None if unknown.

    gated (N,) bool: True where the track's observation was not used (missing, or an
    outlier its gate rejected; engines/tracking/gating.py) and the estimate is the
    prediction; None from engines that do not gate.
    """

    mean: np.ndarray
    cov: np.ndarray | None = None
    gated: np.ndarray | None = None


@runtime_checkable
class TrackerEngine(Protocol):
    """A stateful, batch-first filter: reset(n), then step(x) once per observation.

    `reset(n, z0)` starts n independent tracks from z0 (N, state_dim) or the model's
    prior. `step(x)` consumes observations (N, m) float64 and returns the filtered
    Estimate at that time. A row of x with NaN/inf (a missing reading) or one the
    tracker's outlier gate rejects is not used: that track predicts through and its
    `Estimate.gated` is True, so one bad reading never ends a track. Model-based filters
    and KalmanNet implement the same interface, so the GUI overlays them without knowing
    which is which.
    """

    info: EngineInfo

    def reset(self, n: int = 1, z0: np.ndarray | None = None) -> None: ...

    def step(self, x: np.ndarray) -> Estimate: ...


def check_finite(name: str, x: np.ndarray) -> None:
    """Raise EngineInputError naming the engine if `x` holds NaN or Inf."""
    if not np.isfinite(x).all():
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise EngineInputError(f"{name}: input holds {bad} non-finite value(s) (NaN/Inf)")
