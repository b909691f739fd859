"""Model predictive control with box constraints (seed Example 7, eq. (10)).

At each t, from the estimate z_hat_t, solve over the horizon H

    min_{s_0..s_{H-1}}  sum_{k<H} (z_k' Q z_k + s_k' R s_k) + z_H' S z_H,
    z_{k+1} = A z_k + B s_k,  z_0 = z_hat_t,   lo <= s_k <= hi,

(the noise replaced by its mean, zero) and apply s_0. S is the LQR DARE solution, so with
inactive bounds the rule is LQR's s = -K z_hat exactly. Condensed: Z = Phi z_0 + Gamma U, a
QP in U with Hessian G = Gamma' Qbar Gamma + Rbar and linear term Gamma' Qbar Phi z_0,
solved by accelerated projected gradient (FISTA, step 1 / lambda_max(G)), batched over
tracks and warm-started from the previous plan shifted by one step. The projection onto
the box is a clip, so every returned input satisfies the bounds exactly.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sl

from engines.control.lqg import lqr_gain


class BoxMPC:
    """s_t = the first input of the box-constrained horizon-H plan from z_hat_t (see module).

    __call__(z_hat (N, n)) -> s (N, p), lo <= s <= hi elementwise. `iters` FISTA steps per
    call. reset(n) clears the warm start.
    """

    def __init__(self, A, B, Q, R, horizon: int = 20, lo=-1.0, hi=1.0, iters: int = 100) -> None:
        A, B = np.atleast_2d(A).astype(float), np.atleast_2d(B).astype(float)
        Q, R = np.atleast_2d(Q).astype(float), np.atleast_2d(R).astype(float)
        if horizon < 1 or iters < 1:
            raise ValueError(f"need horizon >= 1 and iters >= 1, got horizon={horizon}, iters={iters}")
        n, p = B.shape
        self.lo = np.broadcast_to(np.asarray(lo, dtype=float), (p,)).copy()
        self.hi = np.broadcast_to(np.asarray(hi, dtype=float), (p,)).copy()
        if np.any(self.lo > self.hi):
            raise ValueError(f"box bounds need lo <= hi, got lo={self.lo}, hi={self.hi}")
        self.n, self.p, self.H, self.iters = n, p, int(horizon), int(iters)
        _, S = lqr_gain(A, B, Q, R)
        # Phi (H n, n): z_1..z_H from z_0; Gamma (H n, H p): from s_0..s_{H-1}
        powers = [np.eye(n)]
        for _ in range(self.H):
            powers.append(A @ powers[-1])
        Phi = np.vstack(powers[1:])
        Gamma = np.zeros((self.H * n, self.H * p))
        for k in range(self.H):
            for j in range(k + 1):
                Gamma[k * n:(k + 1) * n, j * p:(j + 1) * p] = powers[k - j] @ B
        Qbar = sl.block_diag(*([Q] * (self.H - 1) + [S]))
        self.G = Gamma.T @ Qbar @ Gamma + np.kron(np.eye(self.H), R)  # Hessian / 2
        self.F = Gamma.T @ Qbar @ Phi  # linear term / 2 is F z_0
        self.step_size = 1.0 / np.linalg.eigvalsh(self.G).max()
        self.reset(1)

    def reset(self, n: int = 1) -> None:
        self.U = np.zeros((n, self.H * self.p))

    def __call__(self, z_hat: np.ndarray) -> np.ndarray:
        z_hat = np.atleast_2d(np.asarray(z_hat, dtype=float))
        if z_hat.shape[1] != self.n:
            raise ValueError(f"MPC: z_hat must be (N, {self.n}), got {z_hat.shape}")
        if self.U.shape[0] != z_hat.shape[0]:
            self.reset(z_hat.shape[0])
        lo, hi = np.tile(self.lo, self.H), np.tile(self.hi, self.H)
        # warm start: the previous plan shifted by one step, its last input repeated
        U = np.clip(np.hstack((self.U[:, self.p:], self.U[:, -self.p:])), lo, hi)
        lin = z_hat @ self.F.T
        Y, t = U, 1.0
        for _ in range(self.iters):
            U_next = np.clip(Y - self.step_size * (Y @ self.G + lin), lo, hi)  # grad/2 = G U + F z_0
            t_next = 0.5 * (1 + np.sqrt(1 + 4 * t * t))
            Y = U_next + ((t - 1) / t_next) * (U_next - U)
            U, t = U_next, t_next
        self.U = U
        return U[:, :self.p].copy()
