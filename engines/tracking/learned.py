"""Trained tracker modules as TrackerEngines, and tracking artifacts as engines.

`LearnedTracker` wraps any module that follows the stateful-tracker contract of
engines/artifacts.py (`state_names`, `has_cov`, `init_state(n, z0)`,
`step_tensors(y, *state) -> (mean, cov, *next_state)`, and for the outlier gate
`innovation`, `coast`, `observation_noise`: gating.LearnedGate): KalmanNet (both
architectures), the GRU tracker, the model-based RNN and KalmanNet on CNN features of
frames (Ex. 19).
The module is run in inference mode on torch, float32; the engine keeps the state
between calls.

Artifact layout (task "tracking"): card.json has `architecture` = {"name", "kwargs"}
(kwargs of the module's constructor other than the model), `model` = the LorenzSSM
parameters the module assumes {J, dt, q2, r2, obs, angle_deg} and `x0`, the prior mean;
weights.safetensors holds the state dict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from engines.base import EngineInfo, Estimate, Family, check_finite
from engines.errors import BackendUnavailable, EngineInputError
from engines.tracking.gating import LearnedGate, observation_rows
from engines.tracking.ssm import LorenzSSM


@dataclass(frozen=True)
class TrackerArchitecture:
    """How to build one tracker module from (ssm, x0, **kwargs), and its family."""

    build: Callable[..., nn.Module]
    family: Family


def _kalmannet(ssm: LorenzSSM, x0, **kwargs) -> nn.Module:
    from engines.tracking.kalmannet import KalmanNet

    return KalmanNet(ssm, x0=x0, **kwargs)


def _gru_tracker(ssm: LorenzSSM, x0, **kwargs) -> nn.Module:
    from engines.tracking.rnn import GRUTracker

    return GRUTracker(ssm, x0=x0, **kwargs)


def _model_based_rnn(ssm: LorenzSSM, x0, **kwargs) -> nn.Module:
    from engines.tracking.rnn import ModelBasedRNN

    return ModelBasedRNN(ssm, x0=x0, **kwargs)


def _feature_kalmannet(ssm: LorenzSSM, x0, size: int = 28, width: int = 8, **kwargs) -> nn.Module:
    from engines.tracking.features import FeatureTracker, FrameEncoder
    from engines.tracking.kalmannet import KalmanNet

    return FeatureTracker(FrameEncoder(size, width), KalmanNet(ssm, x0=x0, **kwargs))


ARCHITECTURES: dict[str, TrackerArchitecture] = {
    "kalmannet": TrackerArchitecture(_kalmannet, "dnn-aided"),
    "gru-tracker": TrackerArchitecture(_gru_tracker, "black-box"),
    "model-based-rnn": TrackerArchitecture(_model_based_rnn, "dnn-aided"),
    "feature-kalmannet": TrackerArchitecture(_feature_kalmannet, "dnn-aided"),
}


def build_tracker_module(name: str, model: dict[str, Any], x0, **kwargs: Any) -> nn.Module:
    """The untrained module of architecture `name` on LorenzSSM(**model), prior mean x0."""
    arch = ARCHITECTURES.get(name)
    if arch is None:
        raise ValueError(f"unknown tracker architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return arch.build(LorenzSSM(**model), tuple(float(v) for v in x0), **kwargs)


class LearnedTracker:
    """TrackerEngine around a stateful tracker module (contract in the module docstring).

    reset(n, z0): n tracks from z0 (n, state dim) or the module's prior. step(y): y (N, m)
    -> Estimate(mean (N, n) float64, cov (N, n, n) float64 or None when the module has
    none, gated (N,)). A missing (non-finite) or outlying observation is not used: the
    track predicts through (engines/tracking/gating.py). Raises EngineInputError on a
    wrong shape, EngineError if the estimate turns non-finite; either way the state is
    unchanged.
    """

    def __init__(self, name: str, family: Family, module: nn.Module) -> None:
        self.module = module.float().eval()
        self.n_state, self.m = module.n, module.m
        self.info = EngineInfo(
            name=name, family=family, task="tracking", backend="torch", window=1,
            in_shape=(self.m,), out_shape=(self.n_state,),
            n_params=sum(p.numel() for p in module.parameters() if p.requires_grad),
        )
        self.gate = LearnedGate(self.module, name)
        self.reset(1)

    def reset(self, n: int = 1, z0: np.ndarray | None = None) -> None:
        """Start n tracks at z0 (n, state dim), or at the module's prior mean."""
        name = self.info.name
        if n < 1:
            raise EngineInputError(f"{name}: need n >= 1 tracks, got {n}")
        if z0 is not None:
            z0 = np.asarray(z0, dtype=np.float64)
            if z0.shape != (n, self.n_state):
                raise EngineInputError(f"{name}: z0 must be ({n}, {self.n_state}), got {z0.shape}")
            check_finite(name, z0)
            z0 = torch.from_numpy(z0).float()
        with torch.inference_mode():
            self.state = self.module.init_state(n, z0)
        self.gate.reset(n)
        self.n = n

    def step(self, y: np.ndarray) -> Estimate:
        """Filter one observation per track: y (N, m) -> Estimate of x_{t|t}."""
        name = self.info.name
        y = np.asarray(y, dtype=np.float64)
        if y.shape != (self.n, self.m):
            raise EngineInputError(f"{name}: expected y of shape ({self.n}, {self.m}), got {y.shape}")
        y, finite = observation_rows(y, np.float32)
        with torch.inference_mode():
            y = torch.from_numpy(y)
            mean, cov, *state = self.module.step_tensors(y, *self.state)
            mean, cov, state, gated = self.gate(y, finite, self.state, mean, cov, state)
        self.state = tuple(state)
        return Estimate(mean=mean, cov=cov if self.module.has_cov else None, gated=gated)


def engine_from_artifact(art, *, backend: str = "auto") -> LearnedTracker:
    """The LearnedTracker of a verified tracking artifact (engines.artifacts.Artifact).

    Rebuilds the card's architecture on its model and loads the state dict strictly (a
    missing or extra tensor is an ArtifactError). Torch only here.
    """
    if backend not in ("auto", "torch"):
        raise BackendUnavailable(f"{art.card.get('name')}: runs on torch here, not {backend!r}")
    spec = art.card.get("architecture") or {}
    name, kwargs = spec.get("name"), spec.get("kwargs", {})
    card = art.card
    module = art.build_module(lambda: build_tracker_module(name, card["model"], card["x0"], **kwargs), name)
    engine = LearnedTracker(art.card.get("name", art.path.name), ARCHITECTURES[spec["name"]].family, module)
    engine.card = art.card
    return engine
