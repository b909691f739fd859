"""The Lorenz tracker setting of issue 17, closed: hold the Lorenz state at its equilibrium C+.

Plant (the model of engines.tracking.ssm.LorenzSSM, dt = 0.02, J = 5, identity observation):

    z_{t+1} = f(z_t + s_t) + v_t,   x_t = z_t + w_t,   v ~ N(0, q2 I), w ~ N(0, r2 I)

The input s_t is an impulse on the state applied just before the step (full actuation, B = I
at the state), so a filter that predicts f(z_hat) takes it into account exactly by
predicting from z_hat + s: `apply_impulse` shifts the estimate of the EKF (GaussianFilter.x)
or of a learned tracker (its state's x_{t|t}) by s. The target is the unstable equilibrium
C+ = (sqrt(72), sqrt(72), 27) (rho = 28, beta = 8/3), where f(C+) = C+; the controller is
LQR on the linearization delta_{t+1} = F (delta_t + s_t), F = df/dx(C+), i.e. A = B = F:
s_t = -K (z_hat_t - C+). Cost per step: delta' Q delta + s' R s.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from engines.control.lqg import lqr_gain
from engines.tracking.ssm import LorenzSSM

EQUILIBRIUM = np.array([math.sqrt(72.0), math.sqrt(72.0), 27.0])


def equilibrium_lqr(ssm: LorenzSSM, Q, R) -> np.ndarray:
    """K of s = -K (z_hat - C+) from the DARE of delta_{t+1} = F (delta_t + s_t) at C+."""
    F = ssm.F_jacobian(torch.from_numpy(EQUILIBRIUM[None]))[0].numpy()
    return lqr_gain(F, F, Q, R)[0]


def apply_impulse(tracker, s: np.ndarray) -> None:
    """Shift the tracker's current estimate by s (N, 3) so its next prediction is f(z_hat + s).

    Knows two state layouts: a Gaussian filter's `x` (engines.tracking.kalman) and a learned
    tracker's `state` tuple whose first entry is x_{t|t} (KalmanNet, engines.tracking.learned).
    """
    if hasattr(tracker, "state") and isinstance(tracker.state, tuple):
        x = tracker.state[0]
        tracker.state = (x + torch.from_numpy(s).to(x.dtype), *tracker.state[1:])
    elif isinstance(getattr(tracker, "x", None), torch.Tensor):
        tracker.x = tracker.x + torch.from_numpy(s).to(tracker.x.dtype)
    else:
        raise TypeError(f"{type(tracker).__name__}: no estimate to shift by the input")


def simulate_lorenz_loop(tracker, K: np.ndarray, Q, R, *, q2: float, r2: float, runs: int, steps: int,
                         burn: int, seed: int, z0_std: float = 1.0, control: bool = True) -> dict:
    """Monte Carlo of the loop (module docstring) with `tracker` (a TrackerEngine) as estimator.

    Starts at C+ + z0_std N(0, I); the tracker starts at C+. Returns J (mean per-step cost after
    burn), its standard error over runs, the RMS distance to C+ and the estimation RMSE.
    """
    ssm = LorenzSSM(J=5, dt=0.02, q2=q2, r2=r2)
    rng = np.random.default_rng(seed)
    Q, R = np.atleast_2d(Q), np.atleast_2d(R)
    z = EQUILIBRIUM + z0_std * rng.standard_normal((runs, 3))
    tracker.reset(runs, np.tile(EQUILIBRIUM, (runs, 1)))
    cost, dist, err = np.zeros((runs, steps)), np.zeros((runs, steps)), np.zeros((runs, steps))
    for t in range(steps):
        x = z + math.sqrt(r2) * rng.standard_normal((runs, 3))
        z_hat = tracker.step(x).mean
        s = -(z_hat - EQUILIBRIUM) @ K.T if control else np.zeros((runs, 3))
        d = z - EQUILIBRIUM
        cost[:, t] = np.einsum("ni,ij,nj->n", d, Q, d) + np.einsum("ni,ij,nj->n", s, R, s)
        dist[:, t], err[:, t] = np.sum(d * d, 1), np.sum((z_hat - z) ** 2, 1)
        apply_impulse(tracker, s)
        with torch.no_grad():
            z = ssm.f(torch.from_numpy(z + s)).numpy() + math.sqrt(q2) * rng.standard_normal((runs, 3))
    per_run = cost[:, burn:].mean(1)
    return {"J": float(per_run.mean()), "J_se": float(per_run.std(ddof=1) / math.sqrt(runs)),
            "rms_distance": float(math.sqrt(dist[:, burn:].mean())),
            "rmse_estimate": float(math.sqrt(err[:, burn:].mean() / 3))}
