"""Kalman filtering of DNN features (seed Example 19): the Lorenz state seen only as images.

Observation model (what the camera does): the state x = (x1, x2, x3) is rendered as one
Gaussian blob in a SIZE x SIZE frame,

    frame[i, j] = exp(-((j - u)^2 + (i - v)^2) / (2 s^2)) + pixel noise,
    u = (x1 - X1_LO) / (X1_HI - X1_LO) (SIZE - 1),  v = (x3 - X3_LO) / (X3_HI - X3_LO) (SIZE - 1),
    s = S_LO + (x2 - X2_LO) / (X2_HI - X2_LO) (S_HI - S_LO),

so (x1, x3) is the blob's position in the butterfly plane and x2 its width. No tractable
h maps x to pixels for a filter; Example 19's remedy is a trained CNN (`FrameEncoder`)
mapping each frame to a feature vector z_t ~ x_t, i.e. a learned inverse of the camera,
after which the filter sees a linear observation z_t = H x_t + v_t with H = I and v the
encoder's error (its covariance R estimated on held-out frames). The Kalman filter (the
EKF on the Lorenz f with that linear h) and KalmanNet then filter the features.

`FeatureTracker` chains the encoder and a tracker module (KalmanNet) into one module
with the stateful-tracker contract: y_t is the flattened frame (SIZE^2), so the same
TrackerEngine and one-step ONNX graph serve it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

SIZE = 28
X1_LO, X1_HI = -25.0, 25.0
X2_LO, X2_HI = -30.0, 30.0
X3_LO, X3_HI = 0.0, 55.0
S_LO, S_HI = 1.0, 3.0


def render(x: Tensor, noise_std: float = 0.0, generator: torch.Generator | None = None,
           size: int = SIZE) -> Tensor:
    """Frames (..., size, size) float32 of states x (..., 3): the blob model above + N(0, noise_std^2)."""
    x = x.float()
    scale = size - 1
    u = (x[..., 0] - X1_LO) / (X1_HI - X1_LO) * scale
    v = (x[..., 2] - X3_LO) / (X3_HI - X3_LO) * scale
    s = S_LO + (x[..., 1] - X2_LO) / (X2_HI - X2_LO) * (S_HI - S_LO)
    grid = torch.arange(size, dtype=torch.float32)
    dj = (grid - u[..., None]) ** 2  # (..., size) along columns
    di = (grid - v[..., None]) ** 2  # (..., size) along rows
    frames = torch.exp(-(di[..., :, None] + dj[..., None, :]) / (2 * s[..., None, None] ** 2))
    if noise_std > 0:
        frames = frames + noise_std * torch.randn(frames.shape, generator=generator)
    return frames


class FrameEncoder(nn.Module):
    """The CNN of Example 19: a frame (N, size^2) -> features z (N, 3) ~ the state.

    conv 3x3 (1 -> width) ReLU, max-pool 2; conv 3x3 (width -> 2 width) ReLU, max-pool 2;
    FC (2 width (size/4)^2 -> 64) ReLU, FC (64 -> 3), then z = center + spread * output so
    that the outputs start at the scale of the Lorenz state.
    """

    def __init__(self, size: int = SIZE, width: int = 8) -> None:
        super().__init__()
        self.size = size
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * (size // 4) ** 2, 64), nn.ReLU(), nn.Linear(64, 3),
        )
        lo = torch.tensor([X1_LO, X2_LO, X3_LO])
        hi = torch.tensor([X1_HI, X2_HI, X3_HI])
        self.register_buffer("center", (lo + hi) / 2, persistent=False)
        self.register_buffer("spread", (hi - lo) / 2, persistent=False)

    def forward(self, frames: Tensor) -> Tensor:
        z = self.net(frames.reshape(-1, 1, self.size, self.size))
        return self.center + self.spread * z


class FeatureTracker(nn.Module):
    """Encoder + tracker: frames (N, size^2) in, the tracker's estimate out (both contracts).

    `tracker` is a stateful-tracker module on a 3-d identity observation (KalmanNet on
    the features); its state, covariance and names are this module's.
    """

    def __init__(self, encoder: FrameEncoder, tracker: nn.Module) -> None:
        super().__init__()
        self.encoder, self.tracker = encoder, tracker
        self.n, self.m = tracker.n, encoder.size ** 2
        self.state_names, self.has_cov = tracker.state_names, tracker.has_cov

    def init_state(self, n, z0: Tensor | None = None) -> tuple[Tensor, ...]:
        return self.tracker.init_state(n.shape[0] if isinstance(n, Tensor) else n, z0)

    def step_tensors(self, y: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        return self.tracker.step_tensors(self.encoder(y), *state)

    def step(self, state: tuple[Tensor, ...], y: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        return self.tracker.step(state, self.encoder(y))

    def innovation(self, y: Tensor, state: tuple[Tensor, ...], next_state: tuple[Tensor, ...]) -> Tensor:
        """The tracker's innovation in feature space (its next state holds the features z_t)."""
        return self.tracker.innovation(y, state, next_state)

    def coast(self, *state: Tensor) -> tuple[Tensor, ...]:
        return self.tracker.coast(*state)

    def observation_noise(self) -> Tensor:
        return self.tracker.observation_noise()
