"""The extended Kalman filter: predict with f, correct with a gain from Q and R.

The model-based point of the Kalman row in ARCHITECTURE.md: the gain K_t comes from
the model's covariances. seed eq. (11) (z_t = A z_{t-1} + L_t (x_t - C A z_{t-1})) with
A, C replaced by f, h and their Jacobians at the current estimate:

    predict   x_{t|t-1} = f(x_{t-1|t-1})             P_{t|t-1} = F P F' + Q
    update    S = H P H' + R      K_t = P H' S^-1
              x_{t|t} = x_{t|t-1} + K_t (y_t - h(x_{t|t-1}))
              P_{t|t} = (I - K_t H) P = P - K_t S K_t'   (then symmetrized)

with F = df/dx at x_{t-1|t-1} and H = dh/dx at x_{t|t-1}. The covariance update is the
short symmetric form rather than Joseph's (I-KH) P (I-KH)' + K R K' (filterpy's): K is
the optimal gain of this very P and S, where both agree, and it costs 3 tensor ops
instead of 8 at the 500 Hz batch-1 rate the live session runs it. `ekf_predict` and
`ekf_update` are plain differentiable torch functions (batch-first), so learned
covariances (seed Example 13) and KalmanNet (Example 18, which replaces K_t) reuse them.
Anchor: EKF -10.45 dB at nu = -20 dB, 1/r2 = 0 dB (ANCHORS "Tracking").
"""

from __future__ import annotations

import numpy as np
import torch

from engines.base import EngineInfo, Estimate, check_finite
from engines.errors import BackendUnavailable, EngineError, EngineInputError
from engines.tracking.ssm import DEFAULT_Q2, LorenzSSM, StateSpaceModel


def ekf_predict(ssm: StateSpaceModel, x: torch.Tensor, P: torch.Tensor):
    """x_{t|t-1}, P_{t|t-1} from x_{t-1|t-1} (N, n), P_{t-1|t-1} (N, n, n)."""
    x_prior, F = ssm.linearize_f(x)  # x = f(x), F = df/dx at the posterior
    P = torch.baddbmm(ssm.Q, F @ P, F.mT)  # P = F P F' + Q
    return x_prior, P


def ekf_update(ssm: StateSpaceModel, x: torch.Tensor, P: torch.Tensor, y: torch.Tensor):
    """x_{t|t}, P_{t|t} from the prior (N, n), (N, n, n) and the observation y_t (N, m)."""
    y_hat, H = ssm.linearize_h(x)  # y_hat = h(x), H = dh/dx at the prior
    PHt = P @ H.mT
    S = torch.baddbmm(ssm.R, H, PHt)  # S = H P H' + R
    K = torch.linalg.solve_ex(S, PHt.mT)[0].mT  # K = P H' S^-1  (S symmetric)
    x = x + (K @ ssm.innovation(y, y_hat).unsqueeze(-1)).squeeze(-1)  # x = x + K (y - h(x))
    P = torch.baddbmm(P, K, PHt.mT, alpha=-1.0)  # P = (I - K H) P = P - K S K'
    return x, 0.5 * (P + P.mT)  # symmetric to rounding, so it stays a covariance


class ExtendedKalmanFilter:
    """TrackerEngine: a batch of N independent EKFs sharing one model.

    reset(n, z0): n tracks starting at z0 (n, state_dim) or the prior mean x0, with
    covariance P0. step(y): y (N, m) float64 observations at time t -> Estimate of
    x_{t|t} (N, n) and P_{t|t} (N, n, n), fresh numpy arrays. Raises EngineInputError
    on a wrong shape or a non-finite y, EngineError if the estimate itself turns
    non-finite; either way the filter state is left unchanged.
    """

    def __init__(self, ssm: StateSpaceModel, x0, P0) -> None:
        x0, P0 = np.asarray(x0, dtype=np.float64), np.asarray(P0, dtype=np.float64)
        if x0.shape != (ssm.n,) or P0.shape != (ssm.n, ssm.n):
            raise ValueError(f"x0 must be ({ssm.n},) and P0 ({ssm.n}, {ssm.n}), "
                             f"got {x0.shape} and {P0.shape}")
        self.ssm, self.x0, self.P0 = ssm, torch.from_numpy(x0), torch.from_numpy(P0)
        self.info = EngineInfo(
            name="ekf", family="model-based", task="tracking", backend="torch", window=1,
            in_shape=(ssm.m,), out_shape=(ssm.n,), n_params=0,
        )
        self.reset(1)

    def reset(self, n: int = 1, z0: np.ndarray | None = None) -> None:
        """Start n tracks at z0 (n, state_dim), or at x0 when z0 is None; covariance P0."""
        if n < 1:
            raise EngineInputError(f"ekf: need n >= 1 tracks, got {n}")
        if z0 is None:
            self.x = self.x0.expand(n, -1).clone()
        else:
            z0 = np.asarray(z0, dtype=np.float64)
            if z0.shape != (n, self.ssm.n):
                raise EngineInputError(f"ekf: z0 must be ({n}, {self.ssm.n}), got {z0.shape}")
            check_finite("ekf", z0)
            self.x = torch.from_numpy(z0.copy())
        self.P = self.P0.expand(n, -1, -1).clone()

    @property
    def n(self) -> int:
        """Number of tracks."""
        return self.x.shape[0]

    def step(self, y: np.ndarray) -> Estimate:
        """Filter one observation per track: y (N, m) -> Estimate(x_{t|t}, P_{t|t})."""
        y = np.asarray(y, dtype=np.float64)
        if y.shape != (self.n, self.ssm.m):
            raise EngineInputError(f"ekf: expected y of shape ({self.n}, {self.ssm.m}), "
                                   f"got {y.shape}")
        check_finite("ekf", y)
        with torch.inference_mode():
            x, P = ekf_predict(self.ssm, self.x, self.P)
            x, P = ekf_update(self.ssm, x, P, torch.from_numpy(y))
        mean, cov = x.numpy().copy(), P.numpy().copy()
        if not (np.isfinite(mean).all() and np.isfinite(cov).all()):
            raise EngineError("ekf: the estimate became non-finite (singular S = H P H' + R? "
                              "r2 = 0 with a collapsed P); the filter state is unchanged")
        self.x, self.P = x, P
        return Estimate(mean=mean, cov=cov)


def build_ekf(
    *,
    backend: str = "auto",
    J: int = 5,
    dt: float = 0.02,
    q2: float | None = None,
    r2: float = 1.0,
    obs: str = "identity",
    angle_deg: float = 0.0,
    x0: tuple[float, float, float] = (1.0, 1.0, 1.0),
    p0: float = 0.0,
) -> ExtendedKalmanFilter:
    """engines.load("ekf", ...): an EKF on the Lorenz model (KalmanNet's setups).

    Parameters are named like a Lorenz source's meta["model"]: J, dt (Taylor order and
    step of the assumed dynamics), q2 (process noise variance; None: the data have
    none, use DEFAULT_Q2), r2, obs, angle_deg (the observation model), x0 and p0 (prior
    mean and variance p0 I; p0 = 0: x0 is known, as in the anchor). Torch only.
    """
    if backend not in ("auto", "torch"):
        raise BackendUnavailable(f"ekf: runs on torch only, not {backend!r}")
    ssm = LorenzSSM(J=int(J), dt=float(dt), q2=DEFAULT_Q2 if q2 is None else float(q2),
                    r2=float(r2), obs=obs, angle_deg=float(angle_deg))
    if not p0 >= 0:
        raise ValueError(f"p0 must be >= 0, got {p0}")
    return ExtendedKalmanFilter(ssm, x0=x0, P0=float(p0) * np.eye(3))
