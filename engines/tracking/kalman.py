"""Kalman filters: linear (KF), extended (EKF), unscented (UKF), and learned covariances.

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
On a linear model (A, C constant) they are exactly the KF of seed eq. (11).

The UKF replaces the linearization by the unscented transform of 2n+1 scaled sigma
points (Wan & van der Merwe 2000): means and covariances are weighted sums over the
points pushed through f and h. Example 13's filter learns V (= Q) and W (= R) as
Cholesky factors by backpropagation through time through the KF.
Each engine step tests y_t against the chi-square gate on d_t = dy' S^-1 dy, which the
updates return with x_{t|t}, P_{t|t}: a missing or outlying y_t is not used (gating.py).
Anchor: EKF -10.45 dB at nu = -20 dB, 1/r2 = 0 dB (ANCHORS "Tracking").
"""


from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from engines.base import EngineInfo, Estimate, check_finite
from engines.errors import BackendUnavailable, EngineError, EngineInputError
from engines.tracking.gating import filter_gate, keep_where, observation_rows
from engines.tracking.ssm import DEFAULT_Q2, LinearSSM, LorenzSSM, StateSpaceModel, random_walk

# Added to c P when its Cholesky factor fails (P singular: a known x0, P0 = 0).
_JITTER = 1e-12


@dataclass(frozen=True)
class SigmaWeights:
    """Scaled sigma points: at x +- the columns of chol(c P), weights Wm (mean), Wc (covariance)."""

    c: float
    Wm: torch.Tensor  # (2n+1,)
    Wc: torch.Tensor  # (2n+1,)


def ekf_predict(ssm: StateSpaceModel, x: torch.Tensor, P: torch.Tensor):
    """x_{t|t-1}, P_{t|t-1} from x_{t-1|t-1} (N, n), P_{t-1|t-1} (N, n, n)."""
    x_prior, F = ssm.linearize_f(x)  # x = f(x), F = df/dx at the posterior
    P = torch.baddbmm(ssm.Q, F @ P, F.mT)  # P = F P F' + Q
    return x_prior, P


def ekf_update(ssm: StateSpaceModel, x: torch.Tensor, P: torch.Tensor, y: torch.Tensor):
    """x_{t|t}, P_{t|t} from the prior (N, n), (N, n, n) and the observation y_t (N, m), and the
    normalized innovation squared d_t = dy' S^-1 dy (N,) that the outlier gate tests (gating.py)."""
    y_hat, H = ssm.linearize_h(x)  # y_hat = h(x), H = dh/dx at the prior
    PHt = P @ H.mT
    S = torch.baddbmm(ssm.R, H, PHt)  # S = H P H' + R
    dy = ssm.innovation(y, y_hat)  # y - h(x)
    Z = torch.linalg.solve_ex(S, torch.cat((PHt.mT, dy.unsqueeze(-1)), -1))[0]  # S^-1 [H P, dy]
    K = Z[..., :-1].mT  # K = P H' S^-1  (S symmetric)
    x = x + (K @ dy.unsqueeze(-1)).squeeze(-1)  # x = x + K (y - h(x))
    P = torch.baddbmm(P, K, PHt.mT, alpha=-1.0)  # P = (I - K H) P = P - K S K'
    return x, 0.5 * (P + P.mT), (dy * Z[..., -1]).sum(-1)  # P symmetric to rounding; d = dy' S^-1 dy


class GaussianFilter:
    """TrackerEngine: a batch of N independent Gaussian filters sharing one model.

    reset(n, z0): n tracks starting at z0 (n, state_dim) or the prior mean x0, with
    covariance P0. step(y): y (N, m) float64 observations at time t -> Estimate of
    x_{t|t} (N, n) and P_{t|t} (N, n, n), fresh numpy arrays, and `gated` (N,): a track
    whose y is missing (NaN/inf) or fails the chi-square gate on its innovation
    (gating.py) is not updated, its estimate is the prediction x_{t|t-1}, P_{t|t-1}.
    Raises EngineInputError on a wrong shape, EngineError if the prediction or (S
    singular) the update itself turns non-finite; either way the filter state is left
    unchanged. Subclasses set `name` and implement `predict` and `update` (torch).
    """

    name = "gaussian-filter"

    def __init__(self, ssm: StateSpaceModel, x0, P0) -> None:
        x0, P0 = np.asarray(x0, dtype=np.float64), np.asarray(P0, dtype=np.float64)
        if x0.shape != (ssm.n,) or P0.shape != (ssm.n, ssm.n):
            raise ValueError(f"x0 must be ({ssm.n},) and P0 ({ssm.n}, {ssm.n}), "
                             f"got {x0.shape} and {P0.shape}")
        self.ssm, self.x0, self.P0 = ssm, torch.from_numpy(x0), torch.from_numpy(P0)
        self.info = EngineInfo(
            name=self.name, family="model-based", task="tracking", backend="torch", window=1,
            in_shape=(ssm.m,), out_shape=(ssm.n,), n_params=0,
        )
        self.gate = filter_gate(ssm.m)
        self.reset(1)

    def reset(self, n: int = 1, z0: np.ndarray | None = None) -> None:
        """Start n tracks at z0 (n, state_dim), or at x0 when z0 is None; covariance P0."""
        if n < 1:
            raise EngineInputError(f"{self.name}: need n >= 1 tracks, got {n}")
        if z0 is None:
            self.x = self.x0.expand(n, -1).clone()
        else:
            z0 = np.asarray(z0, dtype=np.float64)
            if z0.shape != (n, self.ssm.n):
                raise EngineInputError(f"{self.name}: z0 must be ({n}, {self.ssm.n}), got {z0.shape}")
            check_finite(self.name, z0)
            self.x = torch.from_numpy(z0.copy())
        self.P = self.P0.expand(n, -1, -1).clone()
        self.gate.reset(n)

    @property
    def n(self) -> int:
        """Number of tracks."""
        return self.x.shape[0]

    def predict(self, x: torch.Tensor, P: torch.Tensor):
        """x_{t|t-1}, P_{t|t-1} from x_{t-1|t-1}, P_{t-1|t-1}."""
        raise NotImplementedError

    def update(self, x: torch.Tensor, P: torch.Tensor, y: torch.Tensor):
        """x_{t|t}, P_{t|t} and d_t = dy' S^-1 dy (N,) from x_{t|t-1}, P_{t|t-1} and y_t."""
        raise NotImplementedError

    def step(self, y: np.ndarray) -> Estimate:
        """Filter one observation per track: y (N, m) -> Estimate(x_{t|t}, P_{t|t}, gated)."""
        y = np.asarray(y, dtype=np.float64)
        if y.shape != (self.n, self.ssm.m):
            raise EngineInputError(f"{self.name}: expected y of shape ({self.n}, {self.ssm.m}), "
                                   f"got {y.shape}")
        y, finite = observation_rows(y)
        with torch.inference_mode():
            x_prior, P_prior = self.predict(self.x, self.P)
            x, P, nis = self.update(x_prior, P_prior, torch.from_numpy(y))
        if not (torch.isfinite(x_prior).all() and torch.isfinite(P_prior).all()):
            raise EngineError(f"{self.name}: the prediction became non-finite (the state diverged); "
                              "the filter state is unchanged")
        if (finite & ~torch.isfinite(P).all(-1).all(-1).numpy()).any():  # P_{t|t} does not depend on y
            raise EngineError(f"{self.name}: the estimate became non-finite (singular S = H P H' + R? "
                              "r2 = 0 with a collapsed P); the filter state is unchanged")
        gated = self.gate(nis.numpy()[:, None] / self.ssm.m, finite)
        if gated.any():
            x, P = keep_where(gated, x_prior, x), keep_where(gated, P_prior, P)
        mean, cov = x.numpy().copy(), P.numpy().copy()
        self.x, self.P = x, P
        return Estimate(mean=mean, cov=cov, gated=gated)


class ExtendedKalmanFilter(GaussianFilter):
    """The EKF as a TrackerEngine (see GaussianFilter): ekf_predict then ekf_update."""

    name = "ekf"

    def predict(self, x, P):
        return ekf_predict(self.ssm, x, P)

    def update(self, x, P, y):
        return ekf_update(self.ssm, x, P, y)


class KalmanFilter(ExtendedKalmanFilter):
    """The Kalman filter (seed eq. (11)) of a LinearSSM as a TrackerEngine.

    On a linear model the EKF's Jacobians are the constant A and C, so ekf_predict /
    ekf_update are exactly the KF's predict and update; this class only insists on a
    linear model, so that "kf" never silently linearizes.
    """

    name = "kf"

    def __init__(self, ssm: LinearSSM, x0, P0) -> None:
        if not isinstance(ssm, LinearSSM):
            raise ValueError(f"kf needs a LinearSSM, got {type(ssm).__name__}; use ekf or ukf")
        super().__init__(ssm, x0, P0)


def merwe_weights(n: int, alpha: float = 1.0, beta: float = 2.0, kappa: float = 0.0) -> SigmaWeights:
    """Van der Merwe's scaled sigma-point weights (filterpy's MerweScaledSigmaPoints).

    lambda = alpha^2 (n + kappa) - n, c = n + lambda; Wm = (lambda / c, 1 / 2c, ...),
    Wc = Wm + (1 - alpha^2 + beta) on the centre point.
    """
    lam = alpha**2 * (n + kappa) - n
    c = n + lam
    if not c > 0:
        raise ValueError(f"sigma points need n + lambda = alpha^2 (n + kappa) > 0, got {c} "
                         f"(alpha={alpha}, kappa={kappa})")
    Wm = torch.full((2 * n + 1,), 0.5 / c, dtype=torch.float64)
    Wm[0] = lam / c
    Wc = Wm.clone()
    Wc[0] += 1.0 - alpha**2 + beta
    return SigmaWeights(c=c, Wm=Wm, Wc=Wc)


def sigma_points(x: torch.Tensor, P: torch.Tensor, c: float) -> torch.Tensor:
    """(N, 2n+1, n): x, x + L[:, k], x - L[:, k] with L L' = c P (filterpy's order)."""
    L, info = torch.linalg.cholesky_ex(c * P)
    if info.any():  # P singular, e.g. a known x0 (P0 = 0): a jitter far below any variance here
        L = torch.linalg.cholesky(c * P + _JITTER * torch.eye(P.shape[-1], dtype=P.dtype))
    x, D = x.unsqueeze(1), L.mT  # rows of L' are the columns of L
    return torch.cat((x, x + D, x - D), 1)


def _weighted_cov(W: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_k W_k a_k b_k' for a (N, K, i), b (N, K, j) -> (N, i, j)."""
    return (a * W[:, None]).mT @ b


def _residual(ssm: StateSpaceModel, sig_h: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
    """innovation(sigma_k, y_hat) for every sigma point (N, K, m); wraps angles."""
    N, K, m = sig_h.shape
    return ssm.innovation(sig_h.reshape(N * K, m), y_hat.repeat_interleave(K, 0)).view(N, K, m)


def ukf_predict(ssm: StateSpaceModel, x: torch.Tensor, P: torch.Tensor, W: SigmaWeights):
    """x_{t|t-1}, P_{t|t-1}: the unscented transform of N(x, P) through f, plus Q."""
    N, n = x.shape
    sig = ssm.f(sigma_points(x, P, W.c).view(-1, n)).view(N, -1, n)  # chi = f(chi)
    x = W.Wm @ sig  # x = sum Wm chi
    dev = sig - x.unsqueeze(1)
    return x, _weighted_cov(W.Wc, dev, dev) + ssm.Q  # P = sum Wc (chi - x)(chi - x)' + Q


def ukf_update(ssm: StateSpaceModel, x: torch.Tensor, P: torch.Tensor, y: torch.Tensor,
               W: SigmaWeights):
    """x_{t|t}, P_{t|t} and d_t = e' S^-1 e (N,): sigma points redrawn from the prior N(x, P),
    pushed through h."""
    N, n = x.shape
    sig = sigma_points(x, P, W.c)
    sig_h = ssm.h(sig.view(-1, n)).view(N, sig.shape[1], -1)  # gamma = h(chi)
    # y_hat = sum Wm gamma, taken as gamma_0 + sum Wm (gamma - gamma_0) (sum Wm = 1) so that
    # angles straddling +-pi (spherical azimuth) average through the wrapped differences
    y_hat = sig_h[:, 0] + W.Wm @ _residual(ssm, sig_h, sig_h[:, 0])
    dy = _residual(ssm, sig_h, y_hat)
    S = _weighted_cov(W.Wc, dy, dy) + ssm.R  # S = sum Wc (gamma - y_hat)(.)' + R
    Pxy = _weighted_cov(W.Wc, sig - x.unsqueeze(1), dy)  # P_xy = sum Wc (chi - x)(gamma - y_hat)'
    e = ssm.innovation(y, y_hat)  # y - y_hat
    Z = torch.linalg.solve_ex(S, torch.cat((Pxy.mT, e.unsqueeze(-1)), -1))[0]  # S^-1 [P_xy', e]
    K = Z[..., :-1].mT  # K = P_xy S^-1
    x = x + (K @ e.unsqueeze(-1)).squeeze(-1)
    P = P - K @ S @ K.mT  # P = P - K S K'
    return x, 0.5 * (P + P.mT), (e * Z[..., -1]).sum(-1)  # d = e' S^-1 e


class UnscentedKalmanFilter(GaussianFilter):
    """The UKF (scaled sigma points) as a TrackerEngine (see GaussianFilter).

    Unlike filterpy, whose update reuses the sigma points propagated by predict (they
    miss Q), the update redraws them from N(x_{t|t-1}, P_{t|t-1}), Q included: with the
    sampling-mismatch Q (0.1 against R = I) the reused points understate S and P_xy.
    And the predicted observation averages differences from the centre point, wrapped,
    where filterpy averages the raw values: near azimuth +-pi those differ.
    """

    name = "ukf"

    def __init__(self, ssm: StateSpaceModel, x0, P0, alpha: float = 1.0, beta: float = 2.0,
                 kappa: float = 0.0) -> None:
        self.weights = merwe_weights(ssm.n, alpha, beta, kappa)
        super().__init__(ssm, x0, P0)

    def predict(self, x, P):
        return ukf_predict(self.ssm, x, P, self.weights)

    def update(self, x, P, y):
        return ukf_update(self.ssm, x, P, y, self.weights)


def _tril_factor(M: torch.Tensor) -> nn.Parameter:
    """A parameter holding chol(M) with the log of its diagonal (so L L' stays definite)."""
    L = torch.linalg.cholesky(torch.as_tensor(M, dtype=torch.float64))
    return nn.Parameter(L.tril(-1) + torch.diag_embed(L.diagonal().log()))


def _covariance(theta: torch.Tensor) -> torch.Tensor:
    L = theta.tril(-1) + torch.diag_embed(theta.diagonal().exp())
    return L @ L.mT


class LearnedCovarianceKF(nn.Module):
    """Kalman filter whose V (= Q) and W (= R) are learned by BPTT (seed Example 13).

    The physics A, C of `ssm` stay fixed; V = L_V L_V', W = L_W L_W' with L lower
    triangular, its diagonal stored as a log (so both stay positive definite whatever
    the optimizer does), initialized at V0, W0. forward(y (N, T, m)) -> x_{t|t} (N, T, n)
    from the prior N(x0, P0), differentiable in V and W through every gain K_t, so an
    l2 loss against the true states trains them by backpropagation through time.
    """

    def __init__(self, ssm: LinearSSM, V0, W0, x0, P0) -> None:
        super().__init__()
        self.ssm = ssm
        self.theta_V, self.theta_W = _tril_factor(V0), _tril_factor(W0)
        self.register_buffer("x0", torch.as_tensor(x0, dtype=torch.float64))
        self.register_buffer("P0", torch.as_tensor(P0, dtype=torch.float64))

    @property
    def V(self) -> torch.Tensor:  # noqa: N802 - the seed's V
        return _covariance(self.theta_V)

    @property
    def W(self) -> torch.Tensor:  # noqa: N802 - the seed's W
        return _covariance(self.theta_W)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        model = self.ssm.with_covariances(self.V, self.W)
        N = y.shape[0]
        x, P = self.x0.expand(N, -1), self.P0.expand(N, -1, -1)
        out = []
        for t in range(y.shape[1]):
            x, P = ekf_predict(model, x, P)  # exact KF predict/update on a linear model
            x, P, _ = ekf_update(model, x, P, y[:, t])
            out.append(x)
        return torch.stack(out, 1)


def _prior(x0, p0: float, n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    if not p0 >= 0:
        raise ValueError(f"p0 must be >= 0, got {p0}")
    return np.asarray(x0, dtype=np.float64), float(p0) * np.eye(n)


def _torch_only(name: str, backend: str) -> None:
    if backend not in ("auto", "torch"):
        raise BackendUnavailable(f"{name}: runs on torch only, not {backend!r}")


def lorenz_model(J: int, dt: float, q2: float | None, r2: float, obs: str,
                 angle_deg: float) -> LorenzSSM:
    """The Lorenz model a filter assumes, from a source's meta["model"] (q2 None: DEFAULT_Q2)."""
    return LorenzSSM(J=int(J), dt=float(dt), q2=DEFAULT_Q2 if q2 is None else float(q2),
                     r2=float(r2), obs=obs, angle_deg=float(angle_deg))


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
    _torch_only("ekf", backend)
    ssm = lorenz_model(J, dt, q2, r2, obs, angle_deg)
    return ExtendedKalmanFilter(ssm, *_prior(x0, p0))


def build_ukf(
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
    alpha: float = 1.0,
    beta: float = 2.0,
    kappa: float = 0.0,
) -> UnscentedKalmanFilter:
    """engines.load("ukf", ...): a UKF on the Lorenz model; parameters as build_ekf, plus
    the sigma-point scaling alpha, beta, kappa (default 1, 2, 0: lambda = 0, the points at
    +-sqrt(3) standard deviations). Torch only."""
    _torch_only("ukf", backend)
    ssm = lorenz_model(J, dt, q2, r2, obs, angle_deg)
    return UnscentedKalmanFilter(ssm, *_prior(x0, p0), alpha=float(alpha), beta=float(beta),
                                 kappa=float(kappa))


def build_kf(
    *,
    backend: str = "auto",
    dt: float = 0.02,
    r2: float = 1.0,
    obs: str = "identity",
    angle_deg: float = 0.0,
    x0: tuple[float, float, float] = (1.0, 1.0, 1.0),
    p0: float = 0.0,
) -> KalmanFilter:
    """engines.load("kf", ...): the linear KF a Lorenz source allows, on a random walk.

    A KF needs linear f and h: it gets the source's linear observation (identity or
    rotated; spherical is an error) and no dynamics, x_t = x_{t-1} + w_t with the Q of
    ssm.random_walk. It is the baseline that shows what the Lorenz model buys the EKF.
    The source's J and q2 describe dynamics it does not have, so it takes neither.
    """
    _torch_only("kf", backend)
    ssm = random_walk(dt=float(dt), r2=float(r2), obs=obs, angle_deg=float(angle_deg))
    return KalmanFilter(ssm, *_prior(x0, p0))
