"""What a tracker's exported one-step graph does not hold, for ONNX Runtime and TensorRT: its
initial state, the outlier gate, and the predict-through step of a gated track, in numpy.

A tracking artifact's model.onnx is one filter step (engines/export.py); the runtime engine
around it also needs the module's `init_state(n, z0)` at reset and, for the gate
(engines/tracking/gating.py), its `innovation`, `coast` and `observation_noise`. Here they
are computed from the card (architecture, model, x0) on the numpy Lorenz model
(lorenz_numpy.py), so a tracker runs on ONNX Runtime without torch (issue 18). Each twin
follows its torch module's equations to float rounding (tests/engines/test_torch_free.py
compares them): KalmanNet (kalmannet.py, both gain networks) and the model-based RNN
(rnn.py). An architecture without a twin here (the black-box GRU tracker, KalmanNet on
frame features) uses its torch module through `TorchTwin`, and so needs torch.

The gate (`ArrayGate`) is gating.LearnedGate on numpy arrays: same statistic, same widening.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from engines.errors import EngineError
from engines.tracking.gating import RunningScaleGate
from engines.tracking.lorenz_numpy import LorenzModel

FILTER_STATE = ("x_post", "x_post_prev", "x_prior_prev", "y_prev")  # kalmannet.FILTER_STATE


class KalmanNetTwin:
    """KalmanNet's runtime contract (kalmannet.KalmanNet) without its gain network's weights."""

    has_cov_observations = ("identity", "rotated")

    def __init__(self, model: LorenzModel, x0, arch: str = "arch2", hidden_mult: int = 10, **_: Any) -> None:
        if arch not in ("arch1", "arch2"):
            raise ValueError(f"unknown KalmanNet architecture {arch!r}; known: arch2, arch1")
        self.model, self.n, self.m, self.arch = model, model.n, model.m, arch
        self.x0 = np.asarray(x0, dtype=np.float32).reshape(model.n)
        self.hidden_names = ("h_q", "h_sigma", "h_s") if arch == "arch2" else ("h",)
        self.state_names = FILTER_STATE + self.hidden_names
        self.has_cov = model.obs in self.has_cov_observations
        self.d_h = hidden_mult * (self.n * self.n + self.m * self.m)

    def f(self, x: np.ndarray) -> np.ndarray:
        return self.model.f(x.astype(np.float64)).astype(np.float32)

    def h(self, x: np.ndarray) -> np.ndarray:
        return self.model.h(x.astype(np.float64)).astype(np.float32)

    def init_state(self, n: int, z0: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """(x, x, x, h(x), *hidden): hidden = the identities flattened (arch2) or zeros (arch1)."""
        x = np.broadcast_to(self.x0, (n, self.n)) if z0 is None else np.asarray(z0)
        x = x.astype(np.float32)
        if self.arch == "arch2":
            eye_n = np.broadcast_to(np.eye(self.n, dtype=np.float32).reshape(1, -1), (n, self.n * self.n))
            eye_m = np.broadcast_to(np.eye(self.m, dtype=np.float32).reshape(1, -1), (n, self.m * self.m))
            hidden = (eye_n.copy(), eye_n.copy(), eye_m.copy())
        else:
            hidden = (np.zeros((n, self.d_h), np.float32),)
        return (x.copy(), x.copy(), x.copy(), self.h(x)) + hidden

    def innovation(self, y, state, next_state) -> np.ndarray:
        """y_t - h(x_{t|t-1}) of the step that gave `next_state`."""
        _, _, x_prior, y_t, *_ = next_state
        M = self.model
        return M.innovation(y_t.astype(np.float64), M.h(x_prior.astype(np.float64)))

    def coast(self, x_post, x_post_prev, x_prior_prev, y_prev, *hidden) -> tuple[np.ndarray, ...]:
        """A step without y_t: x_{t|t} = f(x_{t-1|t-1}); the hidden state kept."""
        x_prior = self.f(x_post)
        return (x_prior, x_prior, x_post, x_prior, self.h(x_prior), *hidden)

    def observation_noise(self) -> np.ndarray:
        return np.diag(self.model.R).copy()


class ModelBasedRNNTwin:
    """The model-based RNN's runtime contract (rnn.ModelBasedRNN) without its GRU's weights."""

    state_names = ("x", "h")
    has_cov = False

    def __init__(self, model: LorenzModel, x0, hidden: int = 64, **_: Any) -> None:
        self.model, self.n, self.m, self.hidden = model, model.n, model.m, int(hidden)
        self.x0 = np.asarray(x0, dtype=np.float32).reshape(model.n)

    def init_state(self, n: int, z0: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        x = np.broadcast_to(self.x0, (n, self.n)) if z0 is None else np.asarray(z0)
        return x.astype(np.float32).copy(), np.zeros((n, self.hidden), np.float32)

    def innovation(self, y, state, next_state) -> np.ndarray:
        """y_t - h(f(x_{t-1}))."""
        M = self.model
        return M.innovation(y.astype(np.float64), M.h(M.f(state[0].astype(np.float64))))

    def coast(self, x, h) -> tuple[np.ndarray, ...]:
        """A step without y_t: x_t = f(x_{t-1}), the GRU's hidden state kept."""
        x = self.model.f(x.astype(np.float64)).astype(np.float32)
        return x, x, h

    def observation_noise(self) -> np.ndarray:
        return np.diag(self.model.R).copy()


TWINS: dict[str, Callable[..., Any]] = {"kalmannet": KalmanNetTwin, "model-based-rnn": ModelBasedRNNTwin}


def twin_from_card(card: dict[str, Any]):
    """The numpy twin of a tracking card's module, or None when its architecture (or a model
    parameter the numpy Lorenz model does not know) has none here: its torch module stands in."""
    spec = card.get("architecture") or {}
    twin = TWINS.get(spec.get("name"))
    if twin is None or "model" not in card or "x0" not in card:
        return None
    try:
        return twin(LorenzModel(**card["model"]), card["x0"], **spec.get("kwargs", {}))
    except TypeError:
        return None


class TorchTwin:
    """A torch tracker module behind the numpy twin interface (architectures without a twin)."""

    def __init__(self, module) -> None:
        import torch

        self.module, self.torch = module, torch
        self.state_names, self.has_cov = tuple(module.state_names), bool(getattr(module, "has_cov", False))
        self.n, self.m = module.n, module.m

    def init_state(self, n: int, z0: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        t = self.torch
        z = None if z0 is None else t.as_tensor(np.asarray(z0), dtype=t.float32)
        with t.inference_mode():
            return tuple(s.float().numpy() for s in self.module.init_state(n, z))

    def innovation(self, y, state, next_state) -> np.ndarray:
        t = self.torch
        with t.inference_mode():
            return self.module.innovation(t.from_numpy(y), [t.from_numpy(np.asarray(s)) for s in state],
                                          [t.from_numpy(np.asarray(s)) for s in next_state]).double().numpy()

    def coast(self, *state) -> tuple[np.ndarray, ...]:
        t = self.torch
        with t.inference_mode():
            return tuple(s.numpy() for s in self.module.coast(*(t.from_numpy(np.asarray(s)) for s in state)))

    def observation_noise(self) -> np.ndarray:
        t = self.torch
        with t.inference_mode():
            return self.module.observation_noise().double().numpy()


def _keep_where(gated: np.ndarray, predicted: np.ndarray, updated: np.ndarray) -> np.ndarray:
    """Per track (the leading axis): `predicted` where gated, else `updated` (gating.keep_where)."""
    g = gated.reshape(-1, *(1,) * (updated.ndim - 1))
    return np.where(g, np.asarray(predicted).astype(updated.dtype), updated)


class ArrayGate:
    """gating.LearnedGate on numpy arrays, for the ONNX Runtime and TensorRT trackers.

    `twin`: the module's runtime contract in numpy (a twin above). Call it with the step the
    runtime took; it returns (mean (N, n) f8, cov (N, n, n) f8, next state, gated (N,)).
    """

    def __init__(self, twin, name: str) -> None:
        self.twin, self.name = twin, name
        noise = np.asarray(twin.observation_noise(), dtype=np.float64)
        self.gate = RunningScaleGate(noise, len(noise))
        self.reset(1)

    def reset(self, n: int) -> None:
        self.gate.reset(n)
        self.last_cov = np.zeros((n, self.twin.n, self.twin.n), np.float32)

    def __call__(self, y: np.ndarray, finite: np.ndarray, state: Sequence[np.ndarray], mean: np.ndarray,
                 cov: np.ndarray, next_state: Sequence[np.ndarray]):
        dy = np.asarray(self.twin.innovation(y, state, next_state), dtype=np.float64)
        usable = finite & np.isfinite(mean).all(1) & np.isfinite(cov).all((1, 2))
        with np.errstate(over="ignore"):
            gated = self.gate(np.where(usable[:, None], dy * dy, np.inf), finite)
        next_state = list(next_state)
        if gated.any():
            coasted, *held = self.twin.coast(*state)
            mean = _keep_where(gated, coasted, mean)
            cov = _keep_where(gated, self.last_cov, cov)
            next_state = [_keep_where(gated, h, s) for h, s in zip(held, next_state, strict=True)]
        mean64, cov64 = mean.astype(np.float64), cov.astype(np.float64)
        if not (np.isfinite(mean64).all() and np.isfinite(cov64).all()):
            raise EngineError(f"{self.name}: the estimate became non-finite; the tracker state is unchanged")
        self.last_cov = cov.astype(np.float32)
        return mean64, cov64, next_state, gated
