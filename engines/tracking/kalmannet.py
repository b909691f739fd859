"""KalmanNet (seed Example 18): the EKF's predict/update with the gain K_t from an RNN.

The DNN-aided point of the Kalman row in ARCHITECTURE.md. The model's f and h stay (a
LorenzSSM, what the filter believes); the covariances Q, R and the Jacobians go, and a
recurrent network maps four features to the gain:

    x_{t|t-1} = f(x_{t-1|t-1}),   y_{t|t-1} = h(x_{t|t-1})
    x_{t|t}   = x_{t|t-1} + K_t (y_t - y_{t|t-1}),   K_t = gain(F1, F2, F3, F4, hidden)

    F1 = y_t - y_{t-1}                       (observation difference)
    F2 = y_t - y_{t|t-1}                     (innovation)
    F3 = x_{t-1|t-1} - x_{t-2|t-2}           (forward update difference)
    F4 = x_{t-1|t-1} - x_{t-1|t-2}           (forward evolution difference)

each L2-normalized per track. Gain networks (ANCHORS "Tracking", Revach et al. 2022):
architecture #2 (`GainNet2`, three GRUs tracking Q, Sigma and S, ~24k parameters for
n = m = 3) and architecture #1 (`GainNet1`, one GRU on all features).

Uncertainty (Klein et al., ICASSP 2022): with H = dh/dx constant and of full column rank
(identity and rotated observations), the gain determines the covariances the filter acts
as if it had: from K = Sigma H' (H Sigma H' + R)^-1 follows (I - H K) S = R, hence

    Sigma_{t|t-1} = (H'H)^-1 H' (I - H K_t)^-1 H K_t R H (H'H)^-1,
    Sigma_{t|t}   = (I - K_t H) Sigma_{t|t-1}            (then symmetrized).

For spherical observations H varies with x and may lose rank: `has_cov` is False and
the covariance output is zeros.

Runtime contract (engines/artifacts.py, "stateful tracker artifacts"): `state_names`,
`init_state(n, z0)`, `step_tensors(y, *state) -> (mean, cov, *next_state)`, float32,
batch-first, exportable to ONNX as one step; and for the outlier gate of every runtime
(engines/tracking/gating.py): `innovation` of a step, `coast` (predict through: no y_t)
and `observation_noise`. The same module also follows the trainer's
recurrent contract (mbdl_app/training/bptt.py): `init_state(x)` takes the first chunk's
inputs (only their batch size counts) and `step(state, y_t) -> (state, mean)`.
f and h run in float64 (the ssm's), so the float32 network sees no rounding of the
chaotic dynamics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.tracking.ssm import LorenzSSM

FILTER_STATE = ("x_post", "x_post_prev", "x_prior_prev", "y_prev")


def normalized(v: Tensor) -> Tensor:
    """v / ||v|| per row (N, d); a zero row stays zero."""
    return F.normalize(v, dim=-1, eps=1e-12)


def small_inverse(A: Tensor) -> Tensor:
    """A^-1 for a batch (N, d, d) by Gauss-Jordan without pivoting, unrolled over d.

    Plain arithmetic, so it exports to ONNX opset 17 (which has no matrix inverse). Used
    on I - H K_t, whose leading minors stay away from 0 while the gain is a contraction.
    """
    d = A.shape[-1]
    rows = list(torch.cat((A, torch.eye(d, dtype=A.dtype).expand_as(A)), -1).unbind(-2))
    for k in range(d):
        rows[k] = rows[k] / rows[k][:, k:k + 1]
        for i in range(d):
            if i != k:
                rows[i] = rows[i] - rows[i][:, k:k + 1] * rows[k]
    return torch.stack(rows, -2)[..., d:]


class GainNet2(nn.Module):
    """KalmanNet architecture #2: three GRUs for Q, Sigma and S, and an FC head to K.

    Sizes (n state, m observation; in_mult 5, out_mult 40 as in the paper):
      GRU_Q     input FC(F4) (5n),                 hidden n^2
      GRU_Sigma input [h_Q, FC(F3)] (n^2 + 5n),    hidden n^2
      GRU_S     input [FC(h_Sigma) (m^2), FC([F1, F2]) (10m)], hidden m^2
      K = FC([h_Sigma, h_S]) -> 40 (n^2 + m^2) -> n m
      h_Sigma <- FC([h_Sigma, FC([h_S, K])])  (the S and K paths feed Sigma back)
    Hidden states start at the identities flattened (the priors of Q, Sigma, S).
    """

    hidden_names = ("h_q", "h_sigma", "h_s")

    def __init__(self, n: int, m: int, in_mult: int = 5, out_mult: int = 40) -> None:
        super().__init__()
        self.n, self.m = n, m
        n2, m2 = n * n, m * m
        self.fc_f4 = nn.Sequential(nn.Linear(n, n * in_mult), nn.ReLU())
        self.gru_q = nn.GRUCell(n * in_mult, n2)
        self.fc_f3 = nn.Sequential(nn.Linear(n, n * in_mult), nn.ReLU())
        self.gru_sigma = nn.GRUCell(n2 + n * in_mult, n2)
        self.fc_sigma = nn.Sequential(nn.Linear(n2, m2), nn.ReLU())
        self.fc_f12 = nn.Sequential(nn.Linear(2 * m, 2 * m * in_mult), nn.ReLU())
        self.gru_s = nn.GRUCell(m2 + 2 * m * in_mult, m2)
        hidden = (n2 + m2) * out_mult
        self.fc_gain = nn.Sequential(nn.Linear(n2 + m2, hidden), nn.ReLU(), nn.Linear(hidden, n * m))
        self.fc_back = nn.Sequential(nn.Linear(m2 + n * m, n2), nn.ReLU())
        self.fc_sigma_next = nn.Sequential(nn.Linear(2 * n2, n2), nn.ReLU())

    def init_hidden(self, n_tracks: int) -> tuple[Tensor, ...]:
        eye_n = torch.eye(self.n).reshape(1, -1).expand(n_tracks, -1)
        eye_m = torch.eye(self.m).reshape(1, -1).expand(n_tracks, -1)
        return eye_n.clone(), eye_n.clone(), eye_m.clone()

    def forward(self, f1: Tensor, f2: Tensor, f3: Tensor, f4: Tensor,
                h_q: Tensor, h_sigma: Tensor, h_s: Tensor) -> tuple[Tensor, ...]:
        """K_t (N, n, m) and the next hidden states from normalized features F1..F4."""
        h_q = self.gru_q(self.fc_f4(f4), h_q)
        sigma = self.gru_sigma(torch.cat((h_q, self.fc_f3(f3)), -1), h_sigma)
        h_s = self.gru_s(torch.cat((self.fc_sigma(sigma), self.fc_f12(torch.cat((f1, f2), -1))), -1), h_s)
        k = self.fc_gain(torch.cat((sigma, h_s), -1))
        h_sigma = self.fc_sigma_next(torch.cat((sigma, self.fc_back(torch.cat((h_s, k), -1))), -1))
        return k.view(-1, self.n, self.m), h_q, h_sigma, h_s


class GainNet1(nn.Module):
    """KalmanNet architecture #1: one GRU on all four features, FC layers around it.

    [F1, F2, F3, F4] (2m + 2n) -> FC (in_mult x) -> GRU (hidden hidden_mult (n^2 + m^2))
    -> FC (out_mult x) -> K (n m). Hidden state starts at zero.
    """

    hidden_names = ("h",)

    def __init__(self, n: int, m: int, in_mult: int = 5, hidden_mult: int = 10, out_mult: int = 2) -> None:
        super().__init__()
        self.n, self.m = n, m
        d_in, d_h = 2 * (n + m), hidden_mult * (n * n + m * m)
        self.fc_in = nn.Sequential(nn.Linear(d_in, d_in * in_mult), nn.ReLU())
        self.gru = nn.GRUCell(d_in * in_mult, d_h)
        self.fc_out = nn.Sequential(nn.Linear(d_h, n * m * out_mult), nn.ReLU(),
                                    nn.Linear(n * m * out_mult, n * m))
        self.d_h = d_h

    def init_hidden(self, n_tracks: int) -> tuple[Tensor, ...]:
        return (torch.zeros(n_tracks, self.d_h),)

    def forward(self, f1: Tensor, f2: Tensor, f3: Tensor, f4: Tensor, h: Tensor) -> tuple[Tensor, ...]:
        h = self.gru(self.fc_in(torch.cat((f1, f2, f3, f4), -1)), h)
        return self.fc_out(h).view(-1, self.n, self.m), h


GAIN_NETS = {"arch2": GainNet2, "arch1": GainNet1}


class KalmanNet(nn.Module):
    """The KalmanNet filter of `ssm` (its f, h; not its Q, R) with gain network `arch`.

    x0: the prior mean used when `init_state` gets no z0. `gain_kwargs` go to the gain
    network (GainNet2 / GainNet1). Float32 parameters and state; see the module docstring
    for the equations and both contracts.
    """

    def __init__(self, ssm: LorenzSSM, x0=(1.0, 1.0, 1.0), arch: str = "arch2", **gain_kwargs) -> None:
        super().__init__()
        if arch not in GAIN_NETS:
            raise ValueError(f"unknown KalmanNet architecture {arch!r}; known: {', '.join(GAIN_NETS)}")
        self.ssm, self.n, self.m = ssm, ssm.n, ssm.m
        self.gain = GAIN_NETS[arch](ssm.n, ssm.m, **gain_kwargs)
        self.state_names = FILTER_STATE + self.gain.hidden_names
        self.register_buffer("x0", torch.tensor(x0, dtype=torch.float32).reshape(ssm.n), persistent=False)
        self.has_cov = ssm.obs in ("identity", "rotated")
        if self.has_cov:
            H = ssm.H_jacobian(torch.zeros(1, ssm.n, dtype=torch.float64))[0]
            self.register_buffer("H", H.float(), persistent=False)
            self.register_buffer("H_pinv", torch.linalg.pinv(H).float(), persistent=False)  # (H'H)^-1 H'
            self.register_buffer("R", ssm.R.float(), persistent=False)

    def f(self, x: Tensor) -> Tensor:
        return self.ssm.f(x.double()).float()

    def h(self, x: Tensor) -> Tensor:
        return self.ssm.h(x.double()).float()

    def init_state(self, n, z0: Tensor | None = None) -> tuple[Tensor, ...]:
        """The state of n tracks at z0 (n, state dim) or the prior x0; n may be a tensor
        (the trainer's first input chunk, (N, Tc, m)), whose batch size is taken."""
        if isinstance(n, Tensor):
            n = n.shape[0]
        x = self.x0.expand(n, -1) if z0 is None else z0.to(torch.float32)
        x = x.clone()
        return (x, x.clone(), x.clone(), self.h(x)) + self.gain.init_hidden(n)

    def covariance(self, K: Tensor) -> Tensor:
        """Sigma_{t|t} (N, n, n) implied by the gain K_t (N, n, m) (Klein et al.)."""
        N = K.shape[0]
        HK = self.H @ K
        eye = torch.eye(self.m).expand(N, -1, -1)
        HS = small_inverse(eye - HK) @ HK @ self.R  # H Sigma_{t|t-1} H' = (I - HK)^-1 H K R
        prior = self.H_pinv @ HS @ self.H_pinv.T  # Sigma_{t|t-1}
        post = (torch.eye(self.n).expand(N, -1, -1) - K @ self.H) @ prior  # (I - K H) Sigma_{t|t-1}
        return 0.5 * (post + post.transpose(-1, -2))

    def _filter(self, y: Tensor, x_post: Tensor, x_post_prev: Tensor, x_prior_prev: Tensor,
                y_prev: Tensor, *hidden: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        """x_{t|t}, K_t and the next state from y_t and the state (see the module docstring)."""
        x_prior = self.f(x_post)  # x_{t|t-1} = f(x_{t-1|t-1})
        dy = self.ssm.innovation(y.double(), self.ssm.h(x_prior.double())).float()  # y_t - h(x_{t|t-1})
        K, *hidden = self.gain(normalized(y - y_prev), normalized(dy), normalized(x_post - x_post_prev),
                               normalized(x_post - x_prior_prev), *hidden)
        x = x_prior + (K @ dy.unsqueeze(-1)).squeeze(-1)  # x_{t|t} = x_{t|t-1} + K_t (y_t - y_{t|t-1})
        return x, K, (x, x_post, x_prior, y, *hidden)

    def step_tensors(self, y: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        """One filter step: (mean x_{t|t}, cov Sigma_{t|t} or zeros, *next state)."""
        x, K, state = self._filter(y, *state)
        cov = self.covariance(K) if self.has_cov else torch.zeros(x.shape[0], self.n, self.n)
        return (x, cov, *state)

    def step(self, state: tuple[Tensor, ...], y: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        """The trainer's recurrent step: (next state, x_{t|t}); no covariance."""
        x, _, state = self._filter(y, *state)
        return state, x

    def innovation(self, y: Tensor, state: tuple[Tensor, ...], next_state: tuple[Tensor, ...]) -> Tensor:
        """y_t - h(x_{t|t-1}) (N, m) of the step that gave `next_state` (which holds both)."""
        _, _, x_prior, y_t, *_ = next_state
        return self.ssm.innovation(y_t.double(), self.ssm.h(x_prior.double()))

    def coast(self, x_post: Tensor, x_post_prev: Tensor, x_prior_prev: Tensor, y_prev: Tensor,
              *hidden: Tensor) -> tuple[Tensor, ...]:
        """A step without y_t: x_{t|t} = x_{t|t-1} = f(x_{t-1|t-1}), (mean, *next state). The gain
        network does not run (its hidden state stays); h(x_{t|t-1}) stands in for y_t in F1."""
        x_prior = self.f(x_post)
        return (x_prior, x_prior, x_post, x_prior, self.h(x_prior), *hidden)

    def observation_noise(self) -> Tensor:
        """R's diagonal (m,): the innovation variance the model assumes before any is seen."""
        return self.ssm.R.diagonal()
