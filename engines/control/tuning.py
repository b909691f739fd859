"""Tuning the filter of an LQG loop by gradient descent on the closed-loop cost (issue 17, seed Ex. 12).

The decision rule s_t = -K z_hat_t with z_hat from a Kalman filter is a differentiable function
of the covariances the filter assumes, (V, W) = (q2 V_1, r2 W_1) here. The closed loop is
rolled out in torch, the filter's Riccati recursion included (it reaches the steady-state
gain within the burn-in), and log q2, log r2 follow Adam on the mean per-step cost

    J_hat(theta) = mean_{runs, t >= burn} (z_t' Q z_t + s_t' R s_t),    theta = (log q2, log r2),

with fresh plant noise every step (stochastic gradients, seed eq. (17)). Started from the
mismatched filter (r2 assumed 0.01), the loop finds a gain near the oracle's without being
told the noise statistics: only closed-loop costs are observed. Only q2 / r2 matters to the
gain, so theta is identified up to a common shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engines.control.lqg import LinearPlant, kalman_gain, lqg_cost


@dataclass(frozen=True)
class TuningResult:
    q2: float
    r2: float
    history: list[float]  # J_hat per step (the rollout's cost, noisy)
    J_before: float  # exact steady-state J (lqg_cost) at the start
    J_after: float  # and at the end


def rollout_cost(plant: LinearPlant, K: np.ndarray, Q, R, log_q2: torch.Tensor, log_r2: torch.Tensor,
                 V1: np.ndarray, W1: np.ndarray, *, runs: int, steps: int, burn: int,
                 generator: torch.Generator) -> torch.Tensor:
    """J_hat of the loop with a KF assuming (exp(log_q2) V1, exp(log_r2) W1); differentiable in both."""
    f64 = torch.float64
    A, B, C = (torch.as_tensor(M, dtype=f64) for M in (plant.A, plant.B, plant.C))
    Kt, Qt, Rt = (torch.as_tensor(np.atleast_2d(M), dtype=f64) for M in (K, Q, R))
    Va = log_q2.exp() * torch.as_tensor(V1, dtype=f64)
    Wa = log_r2.exp() * torch.as_tensor(W1, dtype=f64)
    Lv = torch.linalg.cholesky(torch.as_tensor(plant.V, dtype=f64))
    Lw = torch.linalg.cholesky(torch.as_tensor(plant.W, dtype=f64))
    n, m = plant.n, plant.m
    z = torch.randn(runs, n, generator=generator, dtype=f64)
    z_hat = torch.zeros(runs, n, dtype=f64)
    s = torch.zeros(runs, plant.p, dtype=f64)
    P = torch.eye(n, dtype=f64)  # the filter's posterior covariance, shared by the runs
    total = torch.zeros((), dtype=f64)
    for t in range(steps):
        x = z @ C.T + torch.randn(runs, m, generator=generator, dtype=f64) @ Lw.T
        P_prior = A @ P @ A.T + Va  # P_{t|t-1} = A P A' + V
        L = P_prior @ C.T @ torch.linalg.inv(C @ P_prior @ C.T + Wa)  # L_t = P C'(C P C' + W)^-1
        P = P_prior - L @ C @ P_prior
        prior = z_hat @ A.T + s @ B.T
        z_hat = prior + (x - prior @ C.T) @ L.T  # seed eq. (11)
        s = -z_hat @ Kt.T  # seed eq. (12)
        if t >= burn:
            total = total + ((z @ Qt) * z).sum() + ((s @ Rt) * s).sum()
        z = z @ A.T + s @ B.T + torch.randn(runs, n, generator=generator, dtype=f64) @ Lv.T
    return total / (runs * (steps - burn))


def tune_filter_covariances(plant: LinearPlant, K: np.ndarray, Q, R, q2: float, r2: float, V1, W1, *,
                            iters: int = 150, lr: float = 0.1, runs: int = 64, steps: int = 120,
                            burn: int = 40, seed: int = 0) -> TuningResult:
    """Adam on (log q2, log r2) of the filter's assumed (q2 V1, r2 W1) through the closed-loop rollout."""
    if q2 <= 0 or r2 <= 0:
        raise ValueError(f"need q2 > 0 and r2 > 0 to start from, got q2={q2}, r2={r2}")
    log_q2 = torch.tensor(np.log(q2), dtype=torch.float64, requires_grad=True)
    log_r2 = torch.tensor(np.log(r2), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([log_q2, log_r2], lr=lr)
    g = torch.Generator().manual_seed(seed)
    V1, W1 = np.atleast_2d(V1), np.atleast_2d(W1)

    def exact(q, r) -> float:
        L, _ = kalman_gain(plant.A, plant.C, q * V1, r * W1)
        return lqg_cost(plant, K, L, Q, R)

    history = []
    for _ in range(iters):
        opt.zero_grad()
        J = rollout_cost(plant, K, Q, R, log_q2, log_r2, V1, W1, runs=runs, steps=steps, burn=burn,
                         generator=g)
        J.backward()
        opt.step()
        history.append(float(J.detach()))
    q2_new, r2_new = float(log_q2.detach().exp()), float(log_r2.detach().exp())
    return TuningResult(q2=q2_new, r2=r2_new, history=history, J_before=exact(q2, r2),
                        J_after=exact(q2_new, r2_new))
