"""RNN baselines of the KalmanNet comparison: a black-box GRU tracker and the model-based RNN.

Both are the ends of the Kalman row in ARCHITECTURE.md that KalmanNet sits between
(Revach et al. 2022, sec. V; ANCHORS "Tracking", the Table 2 column "RNN (model-based)"):

  GRUTracker (black-box): no model at all. A GRU reads the scaled observation and a
  linear read-out gives the state,  h_t = GRU(y_t / s, h_{t-1}),  x_t = s W h_t + b.
  The initial hidden state encodes the prior, h_0 = tanh(W0 x0 / s + b0), so a track
  can start anywhere (the paper's black-box RNN diverged on sampling mismatch).

  ModelBasedRNN (dnn-aided): keeps f and h but lets a GRU predict the increment over the
  model's prediction instead of a gain times the innovation:
      x_{t|t-1} = f(x_{t-1}),   dy = y_t - h(x_{t|t-1})
      h_t = GRU([dy, x_{t|t-1} / s], h_{t-1}),   x_t = x_{t|t-1} + s W h_t.

`s` (scale) brings the Lorenz state (|x| up to ~50) near unit size. Both follow the
stateful-tracker contract of engines/artifacts.py and the trainer's recurrent contract
(init_state may take the first input chunk; step(state, y) -> (state, mean)); neither
gives a covariance (has_cov False, cov zeros). For the outlier gate (gating.py) each has
an innovation and a coast: the model-based RNN's is y_t - h(f(x_{t-1})) and x_t = f(x_{t-1});
the black box predicts nothing, so its gate compares y_t with h of its last estimate and a
gated step holds that estimate.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from engines.tracking.ssm import LorenzSSM


class RecurrentTracker(nn.Module):
    """Shared plumbing: dims from the model, prior x0, both contracts' step and init_state."""

    has_cov = False

    def __init__(self, ssm: LorenzSSM, x0, scale: float) -> None:
        super().__init__()
        self.ssm, self.n, self.m, self.scale = ssm, ssm.n, ssm.m, float(scale)
        self.register_buffer("x0", torch.tensor(x0, dtype=torch.float32).reshape(ssm.n), persistent=False)

    def prior(self, n, z0: Tensor | None) -> tuple[int, Tensor]:
        """(number of tracks, their initial states); n may be the trainer's first chunk."""
        if isinstance(n, Tensor):
            n = n.shape[0]
        return n, (self.x0.expand(n, -1) if z0 is None else z0.to(torch.float32)).clone()

    def step(self, state: tuple[Tensor, ...], y: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        """The trainer's recurrent step: (next state, x_t)."""
        mean, _, *state = self.step_tensors(y, *state)
        return tuple(state), mean

    def observation_noise(self) -> Tensor:
        """R's diagonal (m,): the innovation variance the model assumes before any is seen."""
        return self.ssm.R.diagonal()


class GRUTracker(RecurrentTracker):
    """Black-box GRU: y_t -> x_t with no model (see the module docstring)."""

    state_names = ("h",)

    def __init__(self, ssm: LorenzSSM, x0=(1.0, 1.0, 1.0), hidden: int = 64, scale: float = 20.0) -> None:
        super().__init__(ssm, x0, scale)
        self.encode = nn.Linear(self.n, hidden)
        self.gru = nn.GRUCell(self.m, hidden)
        self.readout = nn.Linear(hidden, self.n)

    def init_state(self, n, z0: Tensor | None = None) -> tuple[Tensor, ...]:
        n, x = self.prior(n, z0)
        return (torch.tanh(self.encode(x / self.scale)),)

    def step_tensors(self, y: Tensor, h: Tensor) -> tuple[Tensor, ...]:
        h = self.gru(y / self.scale, h)
        x = self.scale * self.readout(h)
        return x, torch.zeros(x.shape[0], self.n, self.n), h

    def innovation(self, y: Tensor, state: tuple[Tensor, ...], next_state: tuple[Tensor, ...]) -> Tensor:
        """y_t - h(x_{t-1}): the last estimate stands in for the prediction a black box lacks."""
        (h,) = state
        return self.ssm.innovation(y.double(), self.ssm.h(self.scale * self.readout(h).double()))

    def coast(self, h: Tensor) -> tuple[Tensor, ...]:
        """A step without y_t: the last estimate, held."""
        return self.scale * self.readout(h), h


class ModelBasedRNN(RecurrentTracker):
    """x_t = f(x_{t-1}) + GRU increment (see the module docstring)."""

    state_names = ("x", "h")

    def __init__(self, ssm: LorenzSSM, x0=(1.0, 1.0, 1.0), hidden: int = 64, scale: float = 20.0) -> None:
        super().__init__(ssm, x0, scale)
        self.gru = nn.GRUCell(self.m + self.n, hidden)
        self.increment = nn.Linear(hidden, self.n)
        self.hidden = hidden

    def init_state(self, n, z0: Tensor | None = None) -> tuple[Tensor, ...]:
        n, x = self.prior(n, z0)
        return x, torch.zeros(n, self.hidden)

    def innovation(self, y: Tensor, state: tuple[Tensor, ...], next_state: tuple[Tensor, ...]) -> Tensor:
        """y_t - h(f(x_{t-1}))."""
        x, _ = state
        return self.ssm.innovation(y.double(), self.ssm.h(self.ssm.f(x.double())))

    def coast(self, x: Tensor, h: Tensor) -> tuple[Tensor, ...]:
        """A step without y_t: x_t = f(x_{t-1}), the GRU's hidden state kept."""
        x = self.ssm.f(x.double()).float()
        return x, x, h

    def step_tensors(self, y: Tensor, x: Tensor, h: Tensor) -> tuple[Tensor, ...]:
        x_prior = self.ssm.f(x.double())  # x_{t|t-1} = f(x_{t-1})
        dy = self.ssm.innovation(y.double(), self.ssm.h(x_prior)).float()
        x_prior = x_prior.float()
        h = self.gru(torch.cat((dy / self.scale, x_prior / self.scale), -1), h)
        x = x_prior + self.scale * self.increment(h)
        return x, torch.zeros(x.shape[0], self.n, self.n), x, h
