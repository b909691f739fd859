"""KalmanNet with a known control input (seed Examples 8 and 18): the gain learned, B s_{t-1} known.

The linear plant's A, B, C stay (what the filter believes of the physics); V and W do not
enter: the gain K_t comes from the gain network of engines.tracking.kalmannet (arch #2 or
#1), fed with the same four normalized features. The prediction includes the input the
controller applied, so the estimator separates the motion it caused from the motion it
must track:

    z_{t|t-1} = A z_{t-1|t-1} + B s_{t-1}
    z_{t|t}   = z_{t|t-1} + K_t (x_t - C z_{t|t-1})

Stateful-tracker contract (engines/artifacts.py, as KalmanNet's): the tracker's input row is
[x_t, s_{t-1}] (width m + p; `m` below is that width, `m_obs` the observation's), so the
same one-step ONNX graph, runtimes and LearnedTracker engine serve it. C = [1, 0] has no
full column rank, so no covariance is implied (`has_cov` False). For the outlier gate: the
innovation is x_t - C z_{t|t-1}; `coast` (no row at all) predicts with s = 0.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from engines.tracking.kalmannet import FILTER_STATE, GAIN_NETS, normalized


class ControlledKalmanNet(nn.Module):
    """KalmanNet on z_{t+1} = A z_t + B s_t, x_t = C z_t (see the module docstring).

    A (n, n), B (n, p), C (m_obs, n); x0 the prior mean; r2_prior the observation-noise
    scale the outlier gate starts from (not used by the filter). Float32 state.
    """

    def __init__(self, A, B, C, x0=None, arch: str = "arch2", r2_prior: float = 1.0, **gain_kwargs) -> None:
        super().__init__()
        if arch not in GAIN_NETS:
            raise ValueError(f"unknown KalmanNet architecture {arch!r}; known: {', '.join(GAIN_NETS)}")
        A, B, C = (torch.as_tensor(np.atleast_2d(M), dtype=torch.float32) for M in (A, B, C))
        n = A.shape[0]
        if A.shape != (n, n) or B.shape[0] != n or C.shape[1] != n:
            raise ValueError(f"need A (n, n), B (n, p), C (m, n); got {tuple(A.shape)}, {tuple(B.shape)}, "
                             f"{tuple(C.shape)}")
        self.n, self.m_obs, self.p = n, C.shape[0], B.shape[1]
        self.m = self.m_obs + self.p  # the tracker's input row [x_t, s_{t-1}]
        self.register_buffer("A", A, persistent=False)
        self.register_buffer("B", B, persistent=False)
        self.register_buffer("C", C, persistent=False)
        x0 = torch.zeros(n) if x0 is None else torch.as_tensor(x0, dtype=torch.float32).reshape(n)
        self.register_buffer("x0", x0, persistent=False)
        self.r2_prior = float(r2_prior)
        self.gain = GAIN_NETS[arch](self.n, self.m_obs, **gain_kwargs)
        self.state_names = FILTER_STATE + self.gain.hidden_names
        self.has_cov = False

    def init_state(self, n, z0: Tensor | None = None) -> tuple[Tensor, ...]:
        """n tracks at z0 (n, state dim) or x0; n may be the trainer's first chunk (N, Tc, m)."""
        if isinstance(n, Tensor):
            n = n.shape[0]
        x = (self.x0.expand(n, -1) if z0 is None else z0.to(torch.float32)).clone()
        return (x, x.clone(), x.clone(), x @ self.C.T) + self.gain.init_hidden(n)

    def _filter(self, row: Tensor, x_post: Tensor, x_post_prev: Tensor, x_prior_prev: Tensor,
                y_prev: Tensor, *hidden: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        y, s = row[:, :self.m_obs], row[:, self.m_obs:]
        x_prior = x_post @ self.A.T + s @ self.B.T  # z_{t|t-1} = A z_{t-1|t-1} + B s_{t-1}
        dy = y - x_prior @ self.C.T  # x_t - C z_{t|t-1}
        K, *hidden = self.gain(normalized(y - y_prev), normalized(dy), normalized(x_post - x_post_prev),
                               normalized(x_post - x_prior_prev), *hidden)
        x = x_prior + (K @ dy.unsqueeze(-1)).squeeze(-1)  # z_{t|t} = z_{t|t-1} + K_t dy
        return x, (x, x_post, x_prior, y, *hidden)

    def step_tensors(self, row: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        """One step: (mean z_{t|t}, zeros for the covariance, *next state)."""
        x, state = self._filter(row, *state)
        return (x, torch.zeros(x.shape[0], self.n, self.n), *state)

    def step(self, state: tuple[Tensor, ...], row: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        """The trainer's recurrent step (mbdl_app/training/bptt.py): (next state, z_{t|t})."""
        x, state = self._filter(row, *state)
        return state, x

    def innovation(self, row: Tensor, state: tuple[Tensor, ...], next_state: tuple[Tensor, ...]) -> Tensor:
        """x_t - C z_{t|t-1} (N, m_obs) of the step that gave `next_state`."""
        _, _, x_prior, y_t, *_ = next_state
        return y_t - x_prior @ self.C.T

    def coast(self, x_post: Tensor, x_post_prev: Tensor, x_prior_prev: Tensor, y_prev: Tensor,
              *hidden: Tensor) -> tuple[Tensor, ...]:
        """A step without a row (no observation, no input known): z_{t|t} = A z_{t-1|t-1}."""
        x_prior = x_post @ self.A.T
        return (x_prior, x_prior, x_post, x_prior, x_prior @ self.C.T, *hidden)

    def observation_noise(self) -> Tensor:
        return torch.full((self.m_obs,), self.r2_prior)


def build_module(model: dict, x0, **kwargs) -> ControlledKalmanNet:
    """The untrained module from a card's `model` {"A", "B", "C"} and prior mean x0."""
    return ControlledKalmanNet(model["A"], model["B"], model["C"], x0=x0, **kwargs)


def engine_from_artifact(art, *, backend: str = "auto"):
    """The LearnedTracker (engines.tracking.learned) of a verified "control-estimator" artifact."""
    from engines.errors import BackendUnavailable
    from engines.tracking.learned import LearnedTracker

    if backend not in ("auto", "torch"):
        raise BackendUnavailable(f"{art.card.get('name')}: runs on torch here, not {backend!r}")
    card = art.card
    kwargs = (card.get("architecture") or {}).get("kwargs", {})
    module = art.build_module(lambda: build_module(card["model"], card["x0"], **kwargs),
                              "ControlledKalmanNet")
    engine = LearnedTracker(card.get("name", art.path.name), card.get("family", "dnn-aided"), module)
    engine.card = card
    return engine


class TrackerEstimator:
    """A TrackerEngine whose input row is [x_t, s_{t-1}] as a closed-loop estimator
    (engines/control/closed_loop.py): step(x, s_prev) -> z_hat_{t|t}."""

    def __init__(self, engine, name: str | None = None) -> None:
        self.engine, self.name = engine, name or engine.info.name

    def reset(self, n: int, z0: np.ndarray | None = None) -> None:
        self.engine.reset(n, z0)

    def step(self, x: np.ndarray, s_prev: np.ndarray) -> np.ndarray:
        return self.engine.step(np.hstack((x, s_prev))).mean
