"""LQG (seed Examples 6 and 8): LQR gain K, steady-state Kalman filter gain L, closed-loop cost J.

Plant (seed eq. (7)):  z_{t+1} = A z_t + B s_t + v_t,  x_t = C z_t + w_t,  v ~ N(0, V), w ~ N(0, W).
Cost (seed eq. (8)), per step in steady state:  J = lim E{z_t' Q z_t + s_t' R s_t}.
Rule (seed eqs. (11)-(12)):  z_hat_t = A z_hat_{t-1} + B s_{t-1} + L (x_t - C (A z_hat_{t-1} + B s_{t-1})),
s_t = -K z_hat_t: the filter uses x_t (current estimator), the controller acts on z_hat_{t|t}.

The reference case of issue 17 (and the convention that reproduces its numbers): the
constant-velocity target with dt = 0.1 discretized by zero-order hold, A = [[1, dt], [0, 1]],
B = [dt^2/2, dt]', V = q2 [[dt^3/3, dt^2/2], [dt^2/2, dt]] (white acceleration noise),
C = [1, 0], W = r2, Q = I, R = 0.1 per step: K = [2.586, 3.443] (= python-control dlqr),
J = 2.787 with q2 = r2 = 1; a filter that assumes r2 = 0.01 gives J = 15.48.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sl


def _matrix(name: str, M, shape: tuple[int | None, int | None]) -> np.ndarray:
    M = np.atleast_2d(np.asarray(M, dtype=np.float64))
    if M.ndim != 2 or any(s is not None and s != d for s, d in zip(shape, M.shape, strict=True)):
        raise ValueError(f"{name} must have shape {shape} (None = any), got {M.shape}")
    if not np.all(np.isfinite(M)):
        raise ValueError(f"{name} has non-finite entries")
    return M


@dataclass(frozen=True)
class LinearPlant:
    """z_{t+1} = A z_t + B s_t + v_t, x_t = C z_t + w_t (seed eq. (7)); V, W the noise covariances."""

    A: np.ndarray
    B: np.ndarray
    C: np.ndarray
    V: np.ndarray
    W: np.ndarray
    dt: float = 1.0

    def __post_init__(self) -> None:
        n = np.atleast_2d(self.A).shape[0]
        A = _matrix("A", self.A, (n, n))
        B = _matrix("B", self.B, (n, None))
        C = _matrix("C", self.C, (None, n))
        object.__setattr__(self, "A", A)
        object.__setattr__(self, "B", B)
        object.__setattr__(self, "C", C)
        object.__setattr__(self, "V", _matrix("V", self.V, (n, n)))
        object.__setattr__(self, "W", _matrix("W", self.W, (C.shape[0], C.shape[0])))

    @property
    def n(self) -> int:
        return self.A.shape[0]

    @property
    def m(self) -> int:
        """Observation dimension (x_t)."""
        return self.C.shape[0]

    @property
    def p(self) -> int:
        """Input dimension (s_t)."""
        return self.B.shape[1]

    def with_noise(self, V=None, W=None) -> LinearPlant:
        """The same physics with other noise covariances (what a mismatched filter assumes)."""
        return LinearPlant(self.A, self.B, self.C, self.V if V is None else V, self.W if W is None else W,
                           self.dt)


def constant_velocity_plant(dt: float = 0.1, q2: float = 1.0, r2: float = 1.0) -> LinearPlant:
    """The 1-D constant-velocity target pushed by an acceleration input (zero-order hold).

    State (position, velocity), A = [[1, dt], [0, 1]], B = [dt^2/2, dt]', C = [1, 0],
    V = q2 [[dt^3/3, dt^2/2], [dt^2/2, dt]] (the same V as engines.tracking.ssm.constant_velocity),
    W = r2.
    """
    if not dt > 0 or q2 < 0 or r2 <= 0:
        raise ValueError(f"need dt > 0, q2 >= 0, r2 > 0; got dt={dt}, q2={q2}, r2={r2}")
    return LinearPlant(
        A=np.array([[1.0, dt], [0.0, 1.0]]), B=np.array([[dt**2 / 2], [dt]]), C=np.array([[1.0, 0.0]]),
        V=q2 * np.array([[dt**3 / 3, dt**2 / 2], [dt**2 / 2, dt]]), W=np.array([[r2]]), dt=dt)


def lqr_gain(A, B, Q, R) -> tuple[np.ndarray, np.ndarray]:
    """(K, S): the infinite-horizon discrete LQR gain, s_t = -K z_t, and the DARE solution S.

    S = A'SA - A'SB (R + B'SB)^-1 B'SA + Q;  K = (R + B'SB)^-1 B'SA.
    """
    A, B = np.atleast_2d(A).astype(float), np.atleast_2d(B).astype(float)
    Q, R = np.atleast_2d(Q).astype(float), np.atleast_2d(R).astype(float)
    S = sl.solve_discrete_are(A, B, Q, R)
    K = np.linalg.solve(R + B.T @ S @ B, B.T @ S @ A)
    return K, S


def kalman_gain(A, C, V, W) -> tuple[np.ndarray, np.ndarray]:
    """(L, P): the steady-state *filter* gain of seed eq. (11) and the prior covariance P.

    P = APA' - APC'(CPC' + W)^-1 CPA' + V;  L = PC'(CPC' + W)^-1 (the update
    z_{t|t} = z_{t|t-1} + L (x_t - C z_{t|t-1}); python-control's dlqe returns A L instead).
    """
    A, C = np.atleast_2d(A).astype(float), np.atleast_2d(C).astype(float)
    P = sl.solve_discrete_are(A.T, C.T, np.atleast_2d(V).astype(float), np.atleast_2d(W).astype(float))
    L = P @ C.T @ np.linalg.inv(C @ P @ C.T + W)
    return L, P


def lqg_cost(plant: LinearPlant, K: np.ndarray, L: np.ndarray, Q, R) -> float:
    """The exact steady-state J of s_t = -K z_hat_t with filter gain L on `plant` (any K, L).

    The error e_t = z_t - z_hat_{t|t} obeys e_{t+1} = (I - LC)(A e_t + v_t) - L w_{t+1},
    whatever the input (the filter knows B s_t); with xi = (z, e),
    xi_{t+1} = [[A - BK, BK], [0, (I - LC)A]] xi_t + [[I, 0], [I - LC, -L]] (v_t, w_{t+1}),
    and J = tr(Q Sigma_zz) + tr(R K Sigma_(z-e) K') from the stationary Sigma (a Lyapunov
    equation). For the optimal L this is tr(SV) + tr(Sigma_{t|t} K'(R + B'SB)K).
    Raises ValueError when the loop is unstable (J infinite).
    """
    A, B, C = plant.A, plant.B, plant.C
    n, m = plant.n, plant.m
    K, L = np.atleast_2d(K), np.atleast_2d(L)
    I = np.eye(n)
    F = np.block([[A - B @ K, B @ K], [np.zeros((n, n)), (I - L @ C) @ A]])
    if np.max(np.abs(np.linalg.eigvals(F))) >= 1:
        raise ValueError("closed loop is unstable for this K, L: the cost is infinite")
    G = np.block([[I, np.zeros((n, m))], [I - L @ C, -L]])
    Sigma = sl.solve_discrete_lyapunov(F, G @ sl.block_diag(plant.V, plant.W) @ G.T)
    Mz = np.hstack((I, np.zeros((n, n))))
    Ms = np.hstack((-K, K))  # s = -K z_hat = -K (z - e)
    Q, R = np.atleast_2d(Q), np.atleast_2d(R)
    return float(np.trace(Q @ Mz @ Sigma @ Mz.T) + np.trace(R @ Ms @ Sigma @ Ms.T))


class KalmanEstimator:
    """Steady-state Kalman filter with a known input, batch-first (N tracks), numpy.

    step(x (N, m), s_prev (N, p)) -> z_hat_{t|t} (N, n):
        z_{t|t-1} = A z_{t-1|t-1} + B s_{t-1}          (predict)
        z_{t|t}   = z_{t|t-1} + L (x_t - C z_{t|t-1})  (update, seed eq. (11))
    L from the covariances the filter *assumes* (V, W of `assumed`), which may differ from
    the plant's (the mismatched KF of issue 17).
    """

    def __init__(self, assumed: LinearPlant, name: str = "kf") -> None:
        self.plant, self.name = assumed, name
        self.L, self.P = kalman_gain(assumed.A, assumed.C, assumed.V, assumed.W)
        self.reset(1)

    def reset(self, n: int, z0: np.ndarray | None = None) -> None:
        self.z = np.zeros((n, self.plant.n)) if z0 is None else np.array(z0, dtype=np.float64)

    def step(self, x: np.ndarray, s_prev: np.ndarray) -> np.ndarray:
        p = self.plant
        z_prior = self.z @ p.A.T + s_prev @ p.B.T
        self.z = z_prior + (x - z_prior @ p.C.T) @ self.L.T
        return self.z
