"""State-space models a filter assumes: x_t = f(x_{t-1}) + w_t, y_t = h(x_t) + v_t.

Torch, batch-first, float64: states (N, n), observations (N, m), Jacobians (N, ., n).
w ~ N(0, Q), v ~ N(0, R). Every operation is differentiable, so the same model serves
a fixed filter, covariances learned by BPTT (seed Example 13) and KalmanNet (Example 18).

The Lorenz model here is what the filter believes; the world it tracks is simulated
separately (drivers/sim/lorenz.py) so that a mismatch between them can exist. Linear
models (LinearSSM): the 1-D constant velocity of seed Example 13 and the random walk a
linear KF assumes for Lorenz data.
"""

from __future__ import annotations

import math

import torch

OBSERVATIONS = ("identity", "rotated", "spherical")

# Process noise variance the Lorenz filter assumes when the data have none. Even then
# the dt = 0.02 model is wrong (sampling mismatch: its one-step error against the
# dt = 1e-5 truth has variance ~0.02, 0.06 in x2) and linearized, and too small a Q is
# the costly mistake: the covariance collapses and the filter stops listening to y.
# EKF MSE, identity obs, r2 = 1, T = 3000 (4 runs):
#   q2                   1e-3   1e-2   0.03   0.1    0.3    1
#   sampling mismatch   +13.9  -0.2   -4.0   -6.3   -5.7   -3.6 dB  (anchor EKF -6.43)
#   exact model, q2=0   -14.7  -12.3  -10.8  -8.6   -6.2   -3.7 dB
# 0.1 is near the mismatch optimum and safe for exact data; a grid search may refine it.
DEFAULT_Q2 = 0.1

# Mean squared one-step increment of the Lorenz state per component at dt = 0.02 (20
# trajectories x 2500 steps on the attractor: 1.0, 2.4, 2.6 for x1, x2, x3): the process
# noise a random-walk model needs to follow the motion it does not model.
RANDOM_WALK_Q2 = 2.0


class StateSpaceModel:
    """Protocol and defaults of a model: f, h, their Jacobians, Q, R, and dims n, m.

    `linearize_f` / `linearize_h` return a function and its Jacobian at once (a model
    overrides them when sharing work is cheaper); `innovation` is y - y_hat, which a
    model with angles in y overrides to wrap them.
    """

    n: int
    m: int
    Q: torch.Tensor  # (n, n)
    R: torch.Tensor  # (m, m)

    def f(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def h(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def F_jacobian(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802 - the paper's F
        raise NotImplementedError

    def H_jacobian(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802 - the paper's H
        raise NotImplementedError

    def linearize_f(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f(x) (N, n), F = df/dx (N, n, n))."""
        return self.f(x), self.F_jacobian(x)

    def linearize_h(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h(x) (N, m), H = dh/dx (N, m, n))."""
        return self.h(x), self.H_jacobian(x)

    def innovation(self, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        return y - y_hat


def _rotation(angle_deg: float) -> torch.Tensor:
    """R_z R_y R_x, each by angle_deg: the rotated observation of the Lorenz source (sim:lorenz)."""
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    Rx = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]], dtype=torch.float64)
    Ry = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=torch.float64)
    Rz = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return Rz @ Ry @ Rx


class LorenzSSM(StateSpaceModel):
    """The discretized Lorenz attractor of KalmanNet (ANCHORS "Tracking").

        f(x) = F(x) x,  F(x) = sum_{j=0..J} (A(x) dt)^j / j!,
        A(x) = [[-10, 10, 0], [28, -1, -x1], [0, x1, -8/3]] = A0 + x1 E

    F_jacobian is the true Jacobian df/dx = F(x) + (dF/dx1 x) e1', not F(x) (the
    reference code's EKF used F(x)). Both come from Horner's rule w <- x + (dt/j) A(x) w,
    j = J..1, differentiated forward: W = [w, dw/dx] (3 x 4) obeys
    W <- [x, I] + (dt/j) (A W + E W S) with S moving column 0 to column 1, i.e. one
    12 x 12 matrix L(x) = I4 (x) A(x) + S' (x) E acting on vec(W).

    Observations (m = 3; as drivers/sim/lorenz.py): "identity" y = x; "rotated"
    y = R_z(angle_deg) x (x1, x2 rotated about the x3 axis); "spherical"
    y = (|x|, atan2(x3, rho), atan2(x2, x1)), rho = sqrt(x1^2 + x2^2), whose Jacobian
    is singular on the x3 axis (rho = 0) and whose azimuth innovation is wrapped.
    """

    n = 3
    m = 3

    def __init__(
        self,
        J: int = 5,
        dt: float = 0.02,
        q2: float = DEFAULT_Q2,
        r2: float = 1.0,
        obs: str = "identity",
        angle_deg: float = 0.0,
    ) -> None:
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
        f64 = torch.float64
        self.Q = q2 * torch.eye(3, dtype=f64)
        self.R = r2 * torch.eye(3, dtype=f64)
        self.alphas = tuple(self.dt / j for j in range(self.J, 0, -1))
        self.A0 = torch.tensor([[-10.0, 10.0, 0.0], [28.0, -1.0, 0.0], [0.0, 0.0, -8.0 / 3.0]],
                               dtype=f64)
        self.E = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]], dtype=f64)
        S = torch.zeros(4, 4, dtype=f64)
        S[0, 1] = 1.0
        I4 = torch.eye(4, dtype=f64)
        # L(x) = I4 (x) A(x) + S' (x) E = L0 + x1 L1
        self._L0 = torch.kron(I4, self.A0) + torch.kron(S.T.contiguous(), self.E)
        self._L1 = torch.kron(I4, self.E)
        self._I3 = torch.eye(3, dtype=f64)
        self._I_vec = self._I3.reshape(1, 9)
        self.H_rot = _rotation(self.angle_deg)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """A(x) (N, 3, 3) = A0 + x1 E."""
        return torch.addcmul(self.A0, x[:, :1, None], self.E)

    def f(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) = F(x) x, (N, 3) -> (N, 3)."""
        A = self.A(x)
        x_col = x.unsqueeze(-1)
        w = x_col
        for alpha in self.alphas:
            w = torch.baddbmm(x_col, A, w, alpha=alpha)  # w = x + (dt/j) A w
        return w.squeeze(-1)

    def linearize_f(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f(x), df/dx) from one Horner pass over vec([w, dw/dx]) (see class docstring)."""
        N = x.shape[0]
        L = torch.addcmul(self._L0, x[:, :1, None], self._L1)  # (N, 12, 12)
        W0 = torch.cat((x, self._I_vec.expand(N, 9)), 1).unsqueeze(-1)  # vec([x, I])
        W = W0
        for alpha in self.alphas:
            W = torch.baddbmm(W0, L, W, alpha=alpha)  # W = W0 + (dt/j) L W
        return W[:, :3, 0], W[:, 3:, 0].view(N, 3, 3).transpose(1, 2)

    def F_jacobian(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """df/dx (N, 3, 3) at x (N, 3)."""
        return self.linearize_f(x)[1]

    def h(self, x: torch.Tensor) -> torch.Tensor:
        """h(x) (N, 3)."""
        if self.obs == "identity":
            return x
        if self.obs == "rotated":
            return x @ self.H_rot.T
        x1, x2, x3 = x.unbind(-1)
        rho = torch.hypot(x1, x2)
        return torch.stack((torch.hypot(rho, x3), torch.atan2(x3, rho), torch.atan2(x2, x1)), -1)

    def H_jacobian(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """dh/dx (N, 3, 3) at x (N, 3)."""
        N = x.shape[0]
        if self.obs == "identity":
            return self._I3.expand(N, 3, 3)
        if self.obs == "rotated":
            return self.H_rot.expand(N, 3, 3)
        x1, x2, x3 = x.unbind(-1)
        rho2 = x1 * x1 + x2 * x2
        rho = rho2.sqrt()
        r2 = rho2 + x3 * x3
        r = r2.sqrt()
        zero = torch.zeros_like(x1)
        return torch.stack(
            (
                torch.stack((x1 / r, x2 / r, x3 / r), -1),  # d|x|/dx
                torch.stack((-x1 * x3 / (r2 * rho), -x2 * x3 / (r2 * rho), rho / r2), -1),
                torch.stack((-x2 / rho2, x1 / rho2, zero), -1),  # d azimuth / dx
            ),
            -2,
        )

    def innovation(self, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        """y - y_hat, with the spherical azimuth difference wrapped to [-pi, pi)."""
        d = y - y_hat
        if self.obs != "spherical":
            return d
        az = torch.remainder(d[:, 2:] + math.pi, 2 * math.pi) - math.pi
        return torch.cat((d[:, :2], az), 1)


class LinearSSM(StateSpaceModel):
    """A linear Gaussian model: x_t = A x_{t-1} + w_t, y_t = C x_t + v_t (seed eq. (7), no input).

    A (n, n), C (m, n), Q (n, n), R (m, m) are float64 tensors; Q and R may carry gradients
    (learned covariances, seed Example 13), A and C are the known physics. In the seed's
    notation the process and observation covariances are V and W; here, as in the
    KalmanNet papers and filterpy, they are Q and R.
    """

    def __init__(self, A: torch.Tensor, C: torch.Tensor, Q: torch.Tensor, R: torch.Tensor) -> None:
        A, C, Q, R = (torch.as_tensor(M, dtype=torch.float64) for M in (A, C, Q, R))
        n, m = A.shape[0], C.shape[0]
        if A.shape != (n, n) or C.shape != (m, n) or Q.shape != (n, n) or R.shape != (m, m):
            raise ValueError(f"need A (n, n), C (m, n), Q (n, n), R (m, m); got A {tuple(A.shape)}, "
                             f"C {tuple(C.shape)}, Q {tuple(Q.shape)}, R {tuple(R.shape)}")
        self.n, self.m = n, m
        self.A, self.C, self.Q, self.R = A, C, Q, R

    def with_covariances(self, Q: torch.Tensor, R: torch.Tensor) -> LinearSSM:
        """The same physics A, C with other noise covariances (e.g. learned ones)."""
        return LinearSSM(self.A, self.C, Q, R)

    def f(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.A.T

    def h(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.C.T

    def F_jacobian(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return self.A.expand(x.shape[0], self.n, self.n)

    def H_jacobian(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return self.C.expand(x.shape[0], self.m, self.n)


def constant_velocity(dt: float = 0.1, q2: float = 1.0, r2: float = 1.0) -> LinearSSM:
    """1-D constant velocity (ANCHORS "Learned noise covariances", seed Example 13).

    State (position, velocity), A = [[1, dt], [0, 1]], position observed: C = [1, 0].
    Q = q2 [[dt^3/3, dt^2/2], [dt^2/2, dt]]: white acceleration noise of spectral density
    q2 integrated over one step (the exact discretization); R = r2.
    """
    if not dt > 0 or q2 < 0 or r2 < 0:
        raise ValueError(f"need dt > 0, q2 >= 0, r2 >= 0; got dt={dt}, q2={q2}, r2={r2}")
    A = torch.tensor([[1.0, dt], [0.0, 1.0]], dtype=torch.float64)
    C = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    Q = q2 * torch.tensor([[dt**3 / 3, dt**2 / 2], [dt**2 / 2, dt]], dtype=torch.float64)
    return LinearSSM(A, C, Q, torch.tensor([[r2]], dtype=torch.float64))


def random_walk(dt: float = 0.02, r2: float = 1.0, obs: str = "identity",
                angle_deg: float = 0.0) -> LinearSSM:
    """The model a linear KF can assume for Lorenz data: x_t = x_{t-1} + w_t, y = H x + v.

    It knows the observation (identity or rotated; spherical is not linear) but none of
    the dynamics: Q must cover the whole motion of one step, RANDOM_WALK_Q2 (dt / 0.02)^2.
    """
    if obs == "spherical":
        raise ValueError("a linear Kalman filter needs a linear observation (identity or "
                         "rotated), not spherical; use ekf, ukf or pf")
    if obs not in OBSERVATIONS:
        raise ValueError(f"obs must be one of {', '.join(OBSERVATIONS)}, got {obs!r}")
    if not dt > 0 or r2 < 0:
        raise ValueError(f"need dt > 0 and r2 >= 0, got dt={dt}, r2={r2}")
    eye = torch.eye(3, dtype=torch.float64)
    C = _rotation(angle_deg) if obs == "rotated" else eye
    return LinearSSM(eye, C, RANDOM_WALK_Q2 * (dt / 0.02) ** 2 * eye, r2 * eye)
