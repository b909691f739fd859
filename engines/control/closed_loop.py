"""The closed loop of seed Example 6, simulated: plant, estimator, controller; J by Monte Carlo.

One step t (N independent runs at once):
    x_t = C z_t + w_t                  (measure)
    z_hat_t = estimator.step(x_t, s_{t-1})   (the estimator knows the input it applied)
    s_t = controller(z_hat_t)          (decide)
    cost_t = z_t' Q z_t + s_t' R s_t   (seed eq. (8))
    z_{t+1} = A z_t + B s_t + v_t      (act)
J = the mean of cost_t over runs and over t >= burn (the steady-state per-step cost).

Estimator protocol: reset(n), step(x (N, m), s_prev (N, p)) -> z_hat (N, n). Controller:
a callable z_hat (N, n) -> s (N, p) (LinearController, BoxMPC), optionally with reset(n).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engines.control.lqg import LinearPlant


class LinearController:
    """s = -K z_hat (seed eq. (12))."""

    def __init__(self, K: np.ndarray) -> None:
        self.K = np.atleast_2d(np.asarray(K, dtype=float))

    def __call__(self, z_hat: np.ndarray) -> np.ndarray:
        return -z_hat @ self.K.T


@dataclass(frozen=True)
class ClosedLoopResult:
    """J (mean per-step cost after burn-in), its standard error over runs, and the traces."""

    J: float
    J_se: float
    cost: np.ndarray  # (N, T) per-step cost
    z: np.ndarray  # (N, T, n) true states
    z_hat: np.ndarray  # (N, T, n) estimates
    s: np.ndarray  # (N, T, p) inputs
    burn: int


def simulate(plant: LinearPlant, estimator, controller, Q, R, *, runs: int, steps: int, burn: int,
             seed: int, z0_std: float = 1.0) -> ClosedLoopResult:
    """Monte Carlo of the closed loop (see module): `runs` runs of `steps` steps, seeded.

    z_0 ~ N(0, z0_std^2 I); the estimator starts at 0. The noise draws depend only on
    `seed`, so estimators compared at one seed see the same plant noise.
    """
    if runs < 1 or steps <= burn or burn < 0:
        raise ValueError(f"need runs >= 1 and 0 <= burn < steps; got runs={runs}, steps={steps}, burn={burn}")
    Q, R = np.atleast_2d(Q), np.atleast_2d(R)
    rng = np.random.default_rng(seed)
    n, m, p = plant.n, plant.m, plant.p
    Lv = np.linalg.cholesky(plant.V + 1e-300 * np.eye(n)) if np.any(plant.V) else np.zeros((n, n))
    Lw = np.linalg.cholesky(plant.W)
    v = rng.standard_normal((steps, runs, n)) @ Lv.T
    w = rng.standard_normal((steps, runs, m)) @ Lw.T
    z = z0_std * rng.standard_normal((runs, n))
    estimator.reset(runs)
    if callable(getattr(controller, "reset", None)):
        controller.reset(runs)
    s = np.zeros((runs, p))
    zs, zh, ss, cost = (np.empty((runs, steps, n)), np.empty((runs, steps, n)), np.empty((runs, steps, p)),
                        np.empty((runs, steps)))
    for t in range(steps):
        x = z @ plant.C.T + w[t]
        z_hat = np.asarray(estimator.step(x, s), dtype=float)
        s = np.asarray(controller(z_hat), dtype=float)
        zs[:, t], zh[:, t], ss[:, t] = z, z_hat, s
        cost[:, t] = np.einsum("ni,ij,nj->n", z, Q, z) + np.einsum("ni,ij,nj->n", s, R, s)
        z = z @ plant.A.T + s @ plant.B.T + v[t]
    per_run = cost[:, burn:].mean(1)
    return ClosedLoopResult(J=float(per_run.mean()), J_se=float(per_run.std(ddof=1) / np.sqrt(runs))
                            if runs > 1 else float("nan"), cost=cost, z=zs, z_hat=zh, s=ss, burn=burn)
