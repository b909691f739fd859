"""Outlier gating: an observation a tracker cannot believe is not used; the step predicts through.

One observation of 1e30 (a glitching sensor, a corrupt line of a serial stream) would
otherwise drag the estimate to 1e30, after which every later step overflows. So every
tracker tests each observation y_t against its prediction before using it:

- a non-finite y_t (NaN, inf: a missing reading) is never used;
- a finite y_t whose innovation is implausible under the tracker's own uncertainty is
  gated (not used) too.

A track whose observation is not used predicts through: its estimate is the prediction
x_{t|t-1} (and P_{t|t-1}), and `Estimate.gated` is True for it. The next good observation
is filtered as usual, so one outlier costs one update, not the track.

The statistic, per track, is a squared innovation divided by its running mean (the
innovation-based adaptive estimation of Mehra 1972), gated at the 1 - 1e-6 quantile of the
F distribution that ratio has when the innovations are white Gaussian:

- Gaussian filters (KF, EKF, UKF) and the particle filter know the innovation covariance
  S_t = H P_{t|t-1} H' + R (the PF: the spread of h over its particles + R), and under
  their model d_t = (y_t - y_hat)' S_t^-1 (y_t - y_hat) is chi2(m), so d_t / m has mean 1.
  The running mean v of the accepted d_t / m starts at 1, counted as C = 32 innovations
  (the filter's own S, trusted until its innovations say otherwise); the gate is then
  (d_t / m) / v > F(m, m C) quantile, 36 in units of d_t for m = 3 and v = 1 (a fixed
  chi2(3) gate: 30.7). A fixed gate is wrong for a filter whose S is too small: the KF's
  random walk on sim:lorenz has mean d_t 4.4, and 1 step in 1000 above 53; a fixed chi2
  gate rejected 0.5 % of its steps, the fastest motion, and cost it 1.9 dB. With the
  running mean it rejects none (below).
- Learned trackers (KalmanNet, the RNNs) have no S. Per track and component v_i = the
  running mean of the accepted dy_i^2, started at the model's observation noise R_ii
  counted as one innovation; with c innovations in v, mean_i dy_i^2 / v_i is
  (approximately, exactly for equal variances) F(m, m c): loose while the scale is
  unknown (1.4e4 for m = 3 after the prior alone, so a track converging from a wrong
  prior is not gated) and 12.0 from c = 31 on.

Both average the last C = 32 accepted innovations once that many are in. Measured, nothing
gated on clean data: KF, EKF, UKF and PF on sim:lorenz (4 x 2000 steps each at r2 = 1,
0.01 and the 10-degree rotation), EKF, UKF, PF, kalmannet-lorenz and mbrnn-lorenz on
4 x 1500 steps of the sampling-mismatch data (KalmanNet's largest statistic 7.5 against
12); kalmannet-lorenz-rot gated 1 of 6000 steps of its rotation data, its MSE unchanged
to 0.01 dB.

The gate of a track widens 2x for every consecutive finite observation it gated (up to
2^20), so a track the filter really lost (the truth moved where the model did not go)
gets its update back within a few steps, while an absurd value (1e30: d_t ~ 1e60) never
passes. A missing observation leaves the widening as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import fdtri

from engines.errors import EngineError

if TYPE_CHECKING:  # torch only in the torch trackers' helpers: the runtime install has no torch
    from torch import Tensor

TAIL = 1e-6  # probability that the gate rejects a good observation, under the model
MAX_WIDENING = 2.0**20
RUNNING_COUNT = 32  # C: accepted innovations averaged into a running scale


def observation_rows(y: np.ndarray, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """(y as `dtype` with the non-finite rows zeroed, and which rows were finite (N,)).

    The zeroed rows only keep a batched step finite; their updates are never used."""
    finite = np.isfinite(y).all(axis=1)
    return np.where(finite[:, None], y, 0.0).astype(dtype), finite


def keep_where(gated: np.ndarray, predicted: Tensor, updated: Tensor) -> Tensor:
    """Per track (the leading axis): `predicted` where gated, else `updated`."""
    import torch

    g = torch.from_numpy(gated).view(-1, *(1,) * (updated.dim() - 1))
    return torch.where(g, predicted.to(updated.dtype), updated)


class RunningScaleGate:
    """Per-track gate on squared innovations against their running mean (module docstring).

    prior (k,): the scale of each squared component before any is seen; dof: the
    innovation's dimension m (the statistic's numerator degrees of freedom); prior_count:
    how many innovations the prior counts as (1: a guess; RUNNING_COUNT: the model's own
    S, trusted until the innovations say otherwise).
    """

    def __init__(self, prior: np.ndarray, dof: int, prior_count: int = 1) -> None:
        self.prior = np.maximum(np.asarray(prior, dtype=np.float64), 1e-12)
        self.prior_count = int(prior_count)
        counts = np.arange(1, RUNNING_COUNT + 1)
        self.thresholds = np.concatenate(([np.inf], fdtri(dof, dof * counts, 1.0 - TAIL)))
        self.reset(1)

    def reset(self, n: int) -> None:
        self.v = np.broadcast_to(self.prior, (n, len(self.prior))).copy()
        self.count = np.full(n, self.prior_count, dtype=np.int64)
        self.misses = np.zeros(n, dtype=np.int64)  # consecutive finite observations gated

    def __call__(self, sq: np.ndarray, finite: np.ndarray) -> np.ndarray:
        """Gated tracks (N,) bool for squared innovation components sq (N, k) of observations
        `finite` (N,); a non-finite or NaN sq (an update that broke) is gated."""
        with np.errstate(over="ignore", invalid="ignore"):  # 1e200 squared is inf: gated
            stat = np.mean(sq / self.v, axis=1)
            widening = np.minimum(2.0**self.misses, MAX_WIDENING)
            gated = ~finite | ~(stat <= self.thresholds[self.count] * widening)
            take = ~gated
            count = np.minimum(self.count + take, RUNNING_COUNT)
            self.v = np.where(take[:, None], self.v + (sq - self.v) / count[:, None], self.v)
        self.count = count
        self.misses = np.where(finite, np.where(gated, self.misses + 1, 0), self.misses)
        return gated


def filter_gate(m: int) -> RunningScaleGate:
    """The gate of a filter that knows S: d_t / m (mean 1 under its model) against its running
    mean, which starts at 1 counted as RUNNING_COUNT innovations."""
    return RunningScaleGate(np.ones(1), m, RUNNING_COUNT)


class LearnedGate:
    """Gating of a learned tracker module for every runtime (torch, ONNX Runtime, TensorRT).

    The module adds three methods to the stateful-tracker contract (engines/artifacts.py):
    `innovation(y, state, next_state) -> (N, d)` the innovation of the step just taken;
    `coast(*state) -> (mean, *next_state)` a step without an observation (the prediction);
    `observation_noise() -> (d,)` the variances its model assumes for that innovation.
    The runtime runs its one-step graph, then hands the step here on CPU torch tensors.
    A gated track's covariance is the last one reported (zeros before any): a learned
    tracker has no Q to grow it by.
    """

    def __init__(self, module, name: str) -> None:
        import torch

        self.module, self.name = module, name
        with torch.inference_mode():
            noise = module.observation_noise().double().numpy()
        self.gate = RunningScaleGate(noise, len(noise))
        self.reset(1)

    def reset(self, n: int) -> None:
        import torch

        self.gate.reset(n)
        self.last_cov = torch.zeros(n, self.module.n, self.module.n)

    def __call__(self, y: Tensor, finite: np.ndarray, state: Sequence[Tensor], mean: Tensor, cov: Tensor,
                 next_state: Sequence[Tensor]) -> tuple[np.ndarray, np.ndarray, list[Tensor], np.ndarray]:
        """(mean (N, n) f8, cov (N, n, n) f8, next state, gated (N,)) of a step the runtime took on
        `y` (its missing rows zeroed; `finite` says which were not). Raises EngineError when even
        the prediction is non-finite (the tracker's state diverged)."""
        dy = self.module.innovation(y, state, next_state).double().numpy()
        usable = finite & np.isfinite(mean.numpy()).all(1) & np.isfinite(cov.numpy()).all((1, 2))
        with np.errstate(over="ignore"):
            gated = self.gate(np.where(usable[:, None], dy * dy, np.inf), finite)
        next_state = list(next_state)
        if gated.any():
            coasted, *held = self.module.coast(*state)
            mean = keep_where(gated, coasted, mean)
            cov = keep_where(gated, self.last_cov, cov)
            next_state = [keep_where(gated, h, s) for h, s in zip(held, next_state, strict=True)]
        mean64, cov64 = mean.double().numpy(), cov.double().numpy()
        if not (np.isfinite(mean64).all() and np.isfinite(cov64).all()):
            raise EngineError(f"{self.name}: the estimate became non-finite; the tracker state is unchanged")
        self.last_cov = cov.float()
        return mean64, cov64, next_state, gated
