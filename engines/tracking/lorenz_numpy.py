"""The Lorenz model a filter assumes, in numpy: the torch-free twin of ssm.LorenzSSM.

The runtime install (issue 18) runs trackers on ONNX Runtime / TensorRT without torch, but
a tracker's reset, outlier gate and model-based baseline still need the model's f, h, their
Jacobians and R. Same equations as ssm.LorenzSSM (see its docstring), float64, batch-first:

    f(x) = F(x) x,  F(x) = sum_{j=0..J} (A(x) dt)^j / j!,  A(x) = A0 + x1 E  (Horner's rule)

`linearize_f` carries W = [w, dw/dx] through the same Horner pass, so df/dx is the true
Jacobian (tests/engines/test_torch_free.py checks every function against LorenzSSM).
`NumpyEKF` is the EKF (seed Example 8) on this model with the same outlier gate as the torch
EKF (engines/tracking/gating.py), for the edge box that runs KalmanNet beside its EKF.
"""

from __future__ import annotations

import math

import numpy as np

from engines.base import EngineInfo, Estimate, check_finite
from engines.errors import BackendUnavailable, EngineError, EngineInputError
from engines.optional_torch import torch_installed
from engines.tracking.gating import filter_gate, observation_rows

OBSERVATIONS = ("identity", "rotated", "spherical")
DEFAULT_Q2 = 0.1  # ssm.DEFAULT_Q2 (the reasoning is there)


def rotation(angle_deg: float) -> np.ndarray:
    """R_z R_y R_x, each by angle_deg (ssm._rotation)."""
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    Rx = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    Ry = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    Rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return Rz @ Ry @ Rx


class LorenzModel:
    """ssm.LorenzSSM in numpy: f, h, their Jacobians, innovation, Q, R; same parameters."""

    n = 3
    m = 3

    def __init__(self, J: int = 5, dt: float = 0.02, q2: float = DEFAULT_Q2, r2: float = 1.0,
                 obs: str = "identity", angle_deg: float = 0.0) -> None:
        if J < 1:
            raise ValueError(f"J must be >= 1, got {J}")
        if not dt > 0:
            raise ValueError(f"dt must be > 0, got {dt}")
        if q2 < 0 or r2 < 0:
            raise ValueError(f"q2 and r2 must be >= 0, got q2={q2}, r2={r2}")
        if obs not in OBSERVATIONS:
            raise ValueError(f"obs must be one of {', '.join(OBSERVATIONS)}, got {obs!r}")
        self.J, self.dt, self.q2, self.r2 = int(J), float(dt), float(q2), float(r2)
        self.obs, self.angle_deg = obs, float(angle_deg)
        self.Q = q2 * np.eye(3)
        self.R = r2 * np.eye(3)
        self.alphas = tuple(self.dt / j for j in range(self.J, 0, -1))
        self.A0 = np.array([[-10.0, 10.0, 0.0], [28.0, -1.0, 0.0], [0.0, 0.0, -8.0 / 3.0]])
        self.E = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        self.H_rot = rotation(self.angle_deg)

    def A(self, x: np.ndarray) -> np.ndarray:  # noqa: N802 - the model's A(x)
        """A(x) (N, 3, 3) = A0 + x1 E."""
        return self.A0 + x[:, :1, None] * self.E

    def f(self, x: np.ndarray) -> np.ndarray:
        """f(x) = F(x) x, (N, 3) -> (N, 3), by w <- x + (dt/j) A(x) w, j = J..1."""
        A = self.A(x)
        w = x
        for alpha in self.alphas:
            w = x + alpha * np.einsum("nij,nj->ni", A, w)
        return w

    def linearize_f(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(f(x), df/dx (N, 3, 3)): the Horner pass differentiated forward,
        dw <- I + (dt/j) (A dw + E w e1')."""
        A = self.A(x)
        N = x.shape[0]
        eye = np.broadcast_to(np.eye(3), (N, 3, 3))
        w, dw = x, eye
        for alpha in self.alphas:
            Ew = np.einsum("ij,nj->ni", self.E, w)  # d(A(x))/dx1 w = E w, in column 0
            dA_w = np.zeros((N, 3, 3))
            dA_w[:, :, 0] = Ew
            w, dw = x + alpha * np.einsum("nij,nj->ni", A, w), eye + alpha * (A @ dw + dA_w)
        return w, dw

    def h(self, x: np.ndarray) -> np.ndarray:
        """h(x) (N, 3)."""
        if self.obs == "identity":
            return x
        if self.obs == "rotated":
            return x @ self.H_rot.T
        x1, x2, x3 = x[:, 0], x[:, 1], x[:, 2]
        rho = np.hypot(x1, x2)
        return np.stack((np.hypot(rho, x3), np.arctan2(x3, rho), np.arctan2(x2, x1)), -1)

    def H_jacobian(self, x: np.ndarray) -> np.ndarray:  # noqa: N802 - the paper's H
        """dh/dx (N, 3, 3) at x (N, 3)."""
        N = x.shape[0]
        if self.obs == "identity":
            return np.broadcast_to(np.eye(3), (N, 3, 3))
        if self.obs == "rotated":
            return np.broadcast_to(self.H_rot, (N, 3, 3))
        x1, x2, x3 = x[:, 0], x[:, 1], x[:, 2]
        rho2 = x1 * x1 + x2 * x2
        rho = np.sqrt(rho2)
        r2 = rho2 + x3 * x3
        r = np.sqrt(r2)
        return np.stack((
            np.stack((x1 / r, x2 / r, x3 / r), -1),
            np.stack((-x1 * x3 / (r2 * rho), -x2 * x3 / (r2 * rho), rho / r2), -1),
            np.stack((-x2 / rho2, x1 / rho2, np.zeros_like(x1)), -1),
        ), -2)

    def innovation(self, y: np.ndarray, y_hat: np.ndarray) -> np.ndarray:
        """y - y_hat, the spherical azimuth difference wrapped to [-pi, pi)."""
        d = y - y_hat
        if self.obs != "spherical":
            return d
        az = np.remainder(d[:, 2:] + math.pi, 2 * math.pi) - math.pi
        return np.concatenate((d[:, :2], az), 1)


class NumpyEKF:
    """The EKF (seed Example 8) on a LorenzModel, in numpy: kalman.EKF without torch.

    reset(n, z0) starts n tracks at z0 (n, 3) or x0 with covariance P0. step(y) (N, m) ->
    Estimate(mean (N, 3), cov (N, 3, 3), gated (N,)): predict, then the update of each track
    whose observation is finite and passes the filter gate (gating.filter_gate); a gated
    track keeps its prediction. EngineInputError on a wrong shape, EngineError when the
    prediction turns non-finite; either way the state is unchanged.
    """

    name = "ekf"

    def __init__(self, model: LorenzModel, x0, P0) -> None:
        self.model = model
        self.x0 = np.asarray(x0, dtype=np.float64).reshape(model.n)
        self.P0 = np.asarray(P0, dtype=np.float64).reshape(model.n, model.n)
        self.info = EngineInfo(name=self.name, family="model-based", task="tracking", backend="numpy",
                               window=1, in_shape=(model.m,), out_shape=(model.n,), n_params=0)
        self.gate = filter_gate(model.m)
        self.reset(1)

    def reset(self, n: int = 1, z0: np.ndarray | None = None) -> None:
        if n < 1:
            raise EngineInputError(f"{self.name}: need n >= 1 tracks, got {n}")
        if z0 is None:
            self.x = np.tile(self.x0, (n, 1))
        else:
            z0 = np.asarray(z0, dtype=np.float64)
            if z0.shape != (n, self.model.n):
                raise EngineInputError(f"{self.name}: z0 must be ({n}, {self.model.n}), got {z0.shape}")
            check_finite(self.name, z0)
            self.x = z0.copy()
        self.P = np.tile(self.P0, (n, 1, 1))
        self.gate.reset(n)

    @property
    def n(self) -> int:
        return self.x.shape[0]

    def step(self, y: np.ndarray) -> Estimate:
        y = np.asarray(y, dtype=np.float64)
        if y.shape != (self.n, self.model.m):
            raise EngineInputError(f"{self.name}: expected y of shape ({self.n}, {self.model.m}), "
                                   f"got {y.shape}")
        y, finite = observation_rows(y)
        M = self.model
        x_prior, F = M.linearize_f(self.x)  # x_{t|t-1} = f(x_{t-1|t-1})
        P_prior = F @ self.P @ F.transpose(0, 2, 1) + M.Q  # P = F P F' + Q
        if not (np.isfinite(x_prior).all() and np.isfinite(P_prior).all()):
            raise EngineError(f"{self.name}: the prediction became non-finite; the state is unchanged")
        H = M.H_jacobian(x_prior)
        PHt = P_prior @ H.transpose(0, 2, 1)
        S = H @ PHt + M.R  # S = H P H' + R
        dy = M.innovation(y, M.h(x_prior))
        with np.errstate(all="ignore"):  # a singular S is caught below, as the torch EKF does
            Z = np.linalg.solve(S, np.concatenate((PHt.transpose(0, 2, 1), dy[:, :, None]), -1))
            K = Z[:, :, :-1].transpose(0, 2, 1)  # K = P H' S^-1  (S symmetric)
            x = x_prior + np.einsum("nij,nj->ni", K, dy)  # x = x + K (y - h(x))
            P = P_prior - K @ PHt.transpose(0, 2, 1)  # P = (I - K H) P = P - K S K'
            P = 0.5 * (P + P.transpose(0, 2, 1))
            nis = np.einsum("ni,ni->n", dy, Z[:, :, -1])  # d = dy' S^-1 dy
        if (finite & ~np.isfinite(P).all((1, 2))).any():
            raise EngineError(f"{self.name}: the estimate became non-finite (singular S = H P H' + R?); "
                              "the filter state is unchanged")
        gated = self.gate(nis[:, None] / M.m, finite)
        x = np.where(gated[:, None], x_prior, x)
        P = np.where(gated[:, None, None], P_prior, P)
        self.x, self.P = x, P
        return Estimate(mean=x.copy(), cov=P.copy(), gated=gated)


def build_ekf(*, backend: str = "auto", J: int = 5, dt: float = 0.02, q2: float | None = None,
              r2: float = 1.0, obs: str = "identity", angle_deg: float = 0.0,
              x0: tuple[float, float, float] = (1.0, 1.0, 1.0), p0: float = 0.0):
    """engines.load("ekf", ...): the EKF on the Lorenz model (parameters as kalman.build_ekf).

    backend "numpy": this module's NumpyEKF; "torch": kalman.ExtendedKalmanFilter; "auto": the
    torch EKF when torch is installed, else the numpy one (the runtime install, issue 18)."""
    if backend not in ("auto", "numpy", "torch"):
        raise BackendUnavailable(f"ekf: runs on numpy or torch, not {backend!r}")
    if backend == "auto":
        backend = "torch" if torch_installed() else "numpy"
    if backend == "torch":
        from engines.tracking.kalman import build_ekf as build_torch_ekf

        return build_torch_ekf(backend="torch", J=J, dt=dt, q2=q2, r2=r2, obs=obs, angle_deg=angle_deg,
                               x0=x0, p0=p0)
    if not p0 >= 0:
        raise ValueError(f"p0 must be >= 0, got {p0}")
    model = LorenzModel(J=int(J), dt=float(dt), q2=DEFAULT_Q2 if q2 is None else float(q2), r2=float(r2),
                        obs=obs, angle_deg=float(angle_deg))
    return NumpyEKF(model, x0, float(p0) * np.eye(3))

