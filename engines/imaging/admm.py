"""The ADMM family: one iteration of seed Algorithm 1, and where its parameters come from.

For min_s 0.5 ||x - H s||^2 + phi(s) (seed eq. (4), sigma^2 merged into phi), with the
split s = v, scaled dual u, penalty 2 lambda and dual step mu, one iteration is
(`admm_step`, the s-update in the linear form of eq. (20)):

    s_{k+1} = W1 x + W2 (v_k - u_k)        W1 = (H'H + 2 lambda I)^-1 H',  W2 = 2 lambda (H'H + 2 lambda I)^-1
    v_{k+1} = prox_{phi / (2 lambda)}(s_{k+1} + u_k)      (eq. (13))
    u_{k+1} = u_k + mu (s_{k+1} - v_{k+1})

The prox is pluggable: `L1Prox(rho)` (soft threshold at rho / (2 lambda): the lasso, seed
Example 10's objective) by default, or any callable (z, tau) -> prox_{tau phi}(z), e.g. a
trained denoiser module (plug-and-play, Example 20). The points of the spectrum differ
only in `layer(k)` (ARCHITECTURE.md "One family, one step"):

    ADMM                  fixed lambda, mu; the exact W1, W2            (Example 9, Fig. 5a)
    LearnedADMM           lambda, mu learned, tied, run long            (Example 14, Fig. 5b)
    UnfoldedADMM          lambda_k, mu_k per layer                      (Example 15)
    UnfoldedADMMWeights   W1_k, W2_k, lambda_k, mu_k per layer          (Example 16, Fig. 5d)

Every learned module starts at the model-based values and reproduces ADMM (tests).
Iterations start from s_0 = v_0 = u_0 = 0 (the seed initializes u_0, v_0 randomly).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engines.errors import BackendUnavailable
from engines.ops.operators import LinearOperator, as_operator
from engines.ops.shrinkage import soft_threshold
from engines.sparse_problem import SparseCodingEngine, sensing_matrix

LinearMap = Callable[[Tensor], Tensor]
Prox = Callable[[Tensor, Tensor | float], Tensor]  # (z, tau) -> prox_{tau phi}(z)


@dataclass(frozen=True, slots=True)
class L1Prox:
    """prox_{tau phi} for phi = rho ||.||_1: the soft threshold T_{tau rho} (the lasso)."""

    rho: float

    def __call__(self, z: Tensor, tau: Tensor | float) -> Tensor:
        return soft_threshold(z, tau * self.rho)


LASSO = L1Prox(0.4)  # the anchors' lasso weight on the 250 x 500 benchmark


@dataclass(frozen=True, slots=True)
class AdmmState:
    """ADMM's variables, each (N, n): the estimate s, the split copy v and the scaled dual u."""

    s: Tensor
    v: Tensor
    u: Tensor


@dataclass(frozen=True, slots=True)
class AdmmLayer:
    """The parameters of one ADMM iteration: the s-update's linear maps W1 (N, m) -> (N, n) and
    W2 (N, n) -> (N, n), the penalty lambda, the dual step mu and the prox."""

    W1: LinearMap
    W2: LinearMap
    lam: Tensor | float
    mu: Tensor | float
    prox: Prox


def admm_step(state: AdmmState, x: Tensor, p: AdmmLayer) -> AdmmState:
    """One iteration of seed Algorithm 1 with the s-update written as eq. (20).

    s_{k+1} = W1 x + W2 (v_k - u_k); v_{k+1} = prox_{phi/(2 lambda)}(s_{k+1} + u_k);
    u_{k+1} = u_k + mu (s_{k+1} - v_{k+1}).
    """
    s = p.W1(x) + p.W2(state.v - state.u)
    v = p.prox(s + state.u, 1 / (2 * p.lam))
    u = state.u + p.mu * (s - v)
    return AdmmState(s=s, v=v, u=u)


class RegularizedInverse(nn.Module):
    """The exact s-update maps of Algorithm 1 for any lambda, from the thin SVD H = U diag(sigma) V'.

    W1(lambda) x = (H'H + 2 lambda I)^-1 H' x = V diag(sigma / (sigma^2 + 2 lambda)) U' x
    W2(lambda) z = 2 lambda (H'H + 2 lambda I)^-1 z = z - V diag(sigma^2 / (sigma^2 + 2 lambda)) V' z
    Differentiable in lambda (a learned lambda changes the inverse, not only a scale);
    O(r (m + n)) per vector instead of a solve. The SVD is taken once, in float64.
    """

    U: Tensor
    sigma: Tensor
    V: Tensor

    def __init__(self, H: Tensor) -> None:
        super().__init__()
        U, sigma, Vh = torch.linalg.svd(H.to(torch.float64), full_matrices=False)
        self.register_buffer("U", U.to(H.dtype))
        self.register_buffer("sigma", sigma.to(H.dtype))
        self.register_buffer("V", Vh.mT.to(H.dtype))

    def W1(self, lam: Tensor | float) -> LinearMap:
        gain = self.sigma / (self.sigma**2 + 2 * lam)
        return lambda x: ((x @ self.U) * gain) @ self.V.mT

    def W2(self, lam: Tensor | float) -> LinearMap:
        gain = self.sigma**2 / (self.sigma**2 + 2 * lam)
        return lambda z: z - ((z @ self.V) * gain) @ self.V.mT


class AdmmFamily(nn.Module):
    """K iterations of `admm_step` from zeros; subclasses say where iteration k's parameters come from.

    forward(x (N, m), return_all=False) -> s_K (N, n), or the list [s_0, ..., s_K] of
    K + 1 estimates with return_all. H: a dense (m, n) matrix, or a LinearOperator, which
    is formed as a matrix (the exact s-update needs H'H + 2 lambda I inverted).
    """

    def __init__(self, H: Tensor | LinearOperator, n_layers: int, prox: Prox) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"need at least one layer/iteration, got {n_layers}")
        H = as_operator(H).matrix()
        self.register_buffer("H", H)
        self.inverse = RegularizedInverse(H)
        self.n_layers, self.prox = int(n_layers), prox

    def layer(self, k: int) -> AdmmLayer:
        raise NotImplementedError

    def exact_layer(self, lam: Tensor | float, mu: Tensor | float) -> AdmmLayer:
        """Algorithm 1's iteration with penalty lam and dual step mu: W1, W2 exact."""
        return AdmmLayer(W1=self.inverse.W1(lam), W2=self.inverse.W2(lam), lam=lam, mu=mu, prox=self.prox)

    def forward(self, x: Tensor, return_all: bool = False) -> Tensor | list[Tensor]:
        zero = x.new_zeros((x.shape[0], self.H.shape[1]))
        state = AdmmState(s=zero, v=zero, u=zero)
        iterates = [state.s]
        for k in range(self.n_layers):
            state = admm_step(state, x, self.layer(k))
            if return_all:
                iterates.append(state.s)
        return iterates if return_all else state.s


class ADMM(AdmmFamily):
    """Model-based ADMM (seed Example 9, Algorithm 1): fixed lambda, mu in every iteration.

    Converges to the minimizer of 0.5 ||x - H s||^2 + phi(s) for convex phi, any lam > 0
    and mu in (0, (1 + sqrt 5) / 2). Default: the lasso with rho = 0.4, lam = 0.5 (penalty 1),
    mu = 1.
    """

    def __init__(self, H: Tensor | LinearOperator, prox: Prox = LASSO, lam: float = 0.5, mu: float = 1.0,
                 n_iter: int = 16) -> None:
        super().__init__(H, n_iter, prox)
        if not (lam > 0 and mu > 0):
            raise ValueError(f"lam and mu must be positive, got lam={lam}, mu={mu}")
        self.lam, self.mu = float(lam), float(mu)

    def layer(self, k: int) -> AdmmLayer:
        return self.exact_layer(self.lam, self.mu)


class _LearnedPenalties(AdmmFamily):
    """lambda and mu held as learnable logarithms `log_lam`, `log_mu` (scalars or (K,))."""

    def _learn_penalties(self, lam: float, mu: float, shape: tuple[int, ...]) -> None:
        self.log_lam = _log_parameter(lam, shape, self.H.dtype)
        self.log_mu = _log_parameter(mu, shape, self.H.dtype)

    @property
    def lam(self) -> Tensor:
        return self.log_lam.exp()

    @property
    def mu(self) -> Tensor:
        return self.log_mu.exp()


class LearnedADMM(_LearnedPenalties):
    """ADMM as a learned optimizer (seed Example 14, eq. (18)): trainable tied lambda, mu.

    Runs n_iter (many) iterations and is trained by backpropagating through all of them.
    lambda, mu > 0 (eq. (18)) are learned through their logarithms (`log_lam`, `log_mu`),
    starting at ADMM's (lam, mu). At exact convergence the lasso minimizer does not depend
    on (lambda, mu), so the learning signal comes from the finite n_iter (test).
    """

    def __init__(self, H: Tensor | LinearOperator, prox: Prox = LASSO, lam: float = 0.5, mu: float = 1.0,
                 n_iter: int = 200) -> None:
        super().__init__(H, n_iter, prox)
        self._learn_penalties(lam, mu, ())

    def layer(self, k: int) -> AdmmLayer:
        return self.exact_layer(self.lam, self.mu)


class UnfoldedADMM(_LearnedPenalties):
    """Deep unfolded ADMM (seed Example 15, eq. (19)): K iterations with lambda_k, mu_k per layer.

    lambda_k, mu_k > 0 are learned through their logarithms; initialized at lambda_k = lam,
    mu_k = mu for all k, i.e. K iterations of ADMM.
    """

    def __init__(self, H: Tensor | LinearOperator, n_layers: int = 16, prox: Prox = LASSO, lam: float = 0.5,
                 mu: float = 1.0) -> None:
        super().__init__(H, n_layers, prox)
        self._learn_penalties(lam, mu, (n_layers,))  # lam, mu: (K,) lambda_k, mu_k

    def layer(self, k: int) -> AdmmLayer:
        return self.exact_layer(self.log_lam[k].exp(), self.log_mu[k].exp())


class UnfoldedADMMWeights(UnfoldedADMM):
    """Deep unfolded ADMM with learned s-updates (seed Example 16, eqs. (20), (21)).

    s_{k+1} = W1_k x + W2_k (v_k - u_k) with W1_k (n, m), W2_k (n, n) trainable per layer,
    besides lambda_k (which still sets the prox threshold) and mu_k. Initialized at
    W1_k = (H'H + 2 lam I)^-1 H', W2_k = 2 lam (H'H + 2 lam I)^-1 (where eq. (20) coincides
    with Algorithm 1), so it starts as K iterations of ADMM.
    """

    def __init__(self, H: Tensor | LinearOperator, n_layers: int = 16, prox: Prox = LASSO, lam: float = 0.5,
                 mu: float = 1.0) -> None:
        super().__init__(H, n_layers, prox=prox, lam=lam, mu=mu)
        H = self.H.to(torch.float64)
        n = H.shape[1]
        M = H.mT @ H + 2 * lam * torch.eye(n, dtype=torch.float64)  # H'H + 2 lambda I
        W1 = torch.linalg.solve(M, H.mT)
        W2 = 2 * lam * torch.linalg.inv(M)
        self.W1 = nn.Parameter(W1.to(self.H.dtype).expand(n_layers, -1, -1).clone())
        self.W2 = nn.Parameter(W2.to(self.H.dtype).expand(n_layers, -1, -1).clone())

    def layer(self, k: int) -> AdmmLayer:
        W1, W2 = self.W1[k], self.W2[k]
        return AdmmLayer(W1=lambda x: x @ W1.mT, W2=lambda z: z @ W2.mT, lam=self.log_lam[k].exp(),
                         mu=self.log_mu[k].exp(), prox=self.prox)


def _log_parameter(value: float, shape: tuple[int, ...], dtype: torch.dtype) -> nn.Parameter:
    """log(value) filled into `shape`: a positive hyperparameter learned on a log scale."""
    if not value > 0:
        raise ValueError(f"lam and mu must be positive, got {value}")
    return nn.Parameter(torch.full(shape, math.log(value), dtype=dtype))


def build_admm(*, backend: str = "auto", seed: int = 0, m: int = 250, n: int = 500, n_iter: int = 16,
               rho: float = 0.4, lam: float = 0.5, mu: float = 1.0) -> SparseCodingEngine:
    """engines.load("admm", ...): ADMM for the lasso (weight rho) on H = sensing_matrix(m, n, seed)."""
    if backend not in ("auto", "torch"):
        raise BackendUnavailable(f"admm: runs on torch only, not {backend!r}")
    H = sensing_matrix(int(m), int(n), int(seed))
    solver = ADMM(H, prox=L1Prox(float(rho)), lam=float(lam), mu=float(mu), n_iter=int(n_iter))
    return SparseCodingEngine("admm", "model-based", solver, operator=H.numpy())
