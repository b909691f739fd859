"""The ISTA family: one step, and where its parameters come from.

The step (seed eqs. (15), (22)), written once in `ista_step`:

    s_{k+1} = T_theta_k(W1_k x + W2_k s_k)

for observations x (N, m) = H s + w and codes s (N, n) (the LISTA papers' b, x and A).
The points of the spectrum (ARCHITECTURE.md "One family, one step") differ only in
`layer(k)`, the source of (W1_k, W2_k, theta_k):

    ISTA       fixed, tied       W1 = mu H', W2 = I - mu H'H, theta = mu rho          (Ex. 10)
    FISTA      the same step taken from the momentum point z_k                       (Beck & Teboulle)
    TunedISTA  mu, rho learned, tied (a learned optimizer)
    LISTA      W1_k, W2_k, theta_k learned per layer                                  (Ex. 17)
    LISTACP    W1_k = W_k', W2_k = I - W_k'H (coupled), theta_k: s + W_k'(x - H s)    (Chen et al. 2018)
    ALISTA     W_k = gamma_k W with W analytic (coherence-minimising), 2K parameters (Liu et al. 2019)

Support selection ("SS", Chen et al.) swaps the shrinkage of layer k for one that lets
the largest q_k of the entries pass (q_k grows 1.2 % per layer up to 13 %). Every learned
module starts at its model-based values, so before training it reproduces them (tests).
Anchors: the 250 x 500 benchmark, 16 layers, theta_0 = rho / (1.001 ||H||_2^2), rho = 0.4.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.base import Family
from engines.errors import BackendUnavailable
from engines.ops.operators import LinearOperator, MatrixOperator, as_operator
from engines.ops.shrinkage import soft_threshold, support_selection
from engines.ops.spectral import spectral_norm
from engines.sparse_problem import SparseCodingEngine, sensing_matrix

LinearMap = Callable[[Tensor], Tensor]
Shrinkage = Callable[[Tensor, Tensor | float], Tensor]

LIPSCHITZ_MARGIN = 1.001  # the anchors' L = 1.001 ||H||_2^2: the power iteration approaches ||H|| from below


@dataclass(frozen=True, slots=True)
class IstaLayer:
    """The parameters of one ISTA step: linear maps W1 (N, m) -> (N, n) and W2 (N, n) -> (N, n),
    the threshold theta (a scalar or broadcastable to (N, n)) and the shrinkage T."""

    W1: LinearMap
    W2: LinearMap
    theta: Tensor | float
    shrink: Shrinkage = soft_threshold


def ista_step(s: Tensor, x: Tensor, p: IstaLayer) -> Tensor:
    """s_{k+1} = T_theta(W1 x + W2 s_k): seed eq. (15) with model-based W1, W2, eq. (22) learned."""
    return p.shrink(p.W1(x) + p.W2(s), p.theta)


def gradient_layer(H: LinearMap, Wt: LinearMap, theta: Tensor | float,
                   shrink: Shrinkage = soft_threshold) -> IstaLayer:
    """The coupled layer W1 = W', W2 = I - W'H, i.e. the step s + W'(x - H s).

    ISTA is W' = mu H' (a gradient step on 0.5 ||x - H s||^2); LISTA-CP learns W per layer,
    ALISTA scales an analytic W.
    """
    return IstaLayer(W1=Wt, W2=lambda s: s - Wt(H(s)), theta=theta, shrink=shrink)


def default_step(H: Tensor | LinearOperator) -> float:
    """mu = 1 / L with L = 1.001 ||H||_2^2 (power iteration): the anchors' ISTA step."""
    return 1.0 / (LIPSCHITZ_MARGIN * spectral_norm(H) ** 2)


@dataclass(frozen=True, slots=True)
class SupportSelection:
    """Layer k (0-based) lets the q_k = min(q_step (k + 1), q_max) largest entries skip the shrinkage."""

    q_step: float = 0.012
    q_max: float = 0.13

    def q(self, k: int) -> float:
        return min(self.q_step * (k + 1), self.q_max)

    def shrinkage(self, k: int) -> Shrinkage:
        return partial(support_selection, q=self.q(k))


CPSS = SupportSelection()  # the anchors' schedule: 1.2 % per layer up to 13 %


def _shrinkage(support: SupportSelection | None, k: int) -> Shrinkage:
    return soft_threshold if support is None else support.shrinkage(k)


def _dense(W: Tensor) -> LinearMap:
    """v -> W v for a batch of row vectors v."""
    return partial(F.linear, weight=W)


class IstaFamily(nn.Module):
    """K steps of `ista_step` from s_0; subclasses say where layer k's parameters come from.

    forward(x (N, m), s0=None, return_all=False) -> s_K (N, *code_shape), or the list
    [s_0, s_1, ..., s_K] of K + 1 iterates with return_all (NMSE per layer). s_0 = 0 unless
    given. With `momentum` (FISTA) each step starts from z_k = s_k + (t_{k-1} - 1)/t_k (s_k - s_{k-1}),
    t_k = (1 + sqrt(1 + 4 t_{k-1}^2)) / 2, t_0 = 1.
    """

    def __init__(self, H: Tensor | LinearOperator, n_layers: int, momentum: bool = False) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"need at least one layer/iteration, got {n_layers}")
        self.H = as_operator(H)
        self.n_layers, self.momentum = int(n_layers), momentum

    @property
    def code_shape(self) -> tuple[int, ...]:
        return self.H.in_shape

    def layer(self, k: int) -> IstaLayer:
        raise NotImplementedError

    def forward(self, x: Tensor, s0: Tensor | None = None, return_all: bool = False) -> Tensor | list[Tensor]:
        s = x.new_zeros((x.shape[0], *self.code_shape)) if s0 is None else s0
        z, t = s, 1.0
        iterates = [s]
        for k in range(self.n_layers):
            s_next = ista_step(z, x, self.layer(k))
            if self.momentum:
                t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
                z = s_next + ((t - 1) / t_next) * (s_next - s)
                t = t_next
            else:
                z = s_next
            s = s_next
            if return_all:
                iterates.append(s)
        return iterates if return_all else s


def ista_layer(H: LinearOperator, mu: Tensor | float, rho: Tensor | float) -> IstaLayer:
    """Model-based ISTA's layer: W1 = mu H', W2 = I - mu H'H, theta = mu rho (seed eq. (15))."""
    return gradient_layer(H, lambda v: mu * H.adjoint(v), mu * rho)


class ISTA(IstaFamily):
    """Model-based ISTA for min 0.5 ||x - H s||^2 + rho ||s||_1 (seed Example 10, eq. (15)).

    Fixed, tied parameters W1 = mu H', W2 = I - mu H'H, theta = mu rho, with mu = 1/L,
    L = 1.001 ||H||_2^2 unless given. H is a dense matrix (m, n) or any LinearOperator
    (a blur, a blur + downsample): the step uses only H and H'.
    """

    def __init__(self, H: Tensor | LinearOperator, rho: float = 0.4, n_iter: int = 16,
                 mu: float | None = None, momentum: bool = False) -> None:
        super().__init__(H, n_iter, momentum)
        self.rho = float(rho)
        self.mu = default_step(self.H) if mu is None else float(mu)

    def layer(self, k: int) -> IstaLayer:
        return ista_layer(self.H, self.mu, self.rho)


class FISTA(ISTA):
    """Model-based FISTA: ISTA's step taken from the momentum point (Beck & Teboulle 2009)."""

    def __init__(self, H: Tensor | LinearOperator, rho: float = 0.4, n_iter: int = 16,
                 mu: float | None = None) -> None:
        super().__init__(H, rho=rho, n_iter=n_iter, mu=mu, momentum=True)


class TunedISTA(IstaFamily):
    """ISTA as a learned optimizer (seed Sec. III-A): the tied step mu and weight rho are trained.

    mu, rho > 0 are learned through their logarithms (`log_mu`, `log_rho`), starting at
    ISTA's values, and used by every one of the n_iter iterations.
    """

    def __init__(self, H: Tensor | LinearOperator, rho: float = 0.4, n_iter: int = 100,
                 mu: float | None = None) -> None:
        super().__init__(H, n_iter)
        mu = default_step(self.H) if mu is None else float(mu)
        if not (mu > 0 and rho > 0):
            raise ValueError(f"mu and rho must be positive, got mu={mu}, rho={rho}")
        self.log_mu = nn.Parameter(torch.tensor(math.log(mu), dtype=self.H.dtype))
        self.log_rho = nn.Parameter(torch.tensor(math.log(rho), dtype=self.H.dtype))

    def layer(self, k: int) -> IstaLayer:
        return ista_layer(self.H, self.log_mu.exp(), self.log_rho.exp())


class LISTA(IstaFamily):
    """LISTA (seed Example 17, eq. (22)): untied W1_k (n, m), W2_k (n, n), theta_k per layer.

    Initialized at ISTA's values W1_k = mu H', W2_k = I - mu H'H, theta_k = mu rho, so it
    reproduces K ISTA iterations before training. The seed's extra scalar mu_k in front of
    W2_k is absorbed into W2_k. `support` adds support selection (LISTA-SS).
    """

    def __init__(self, H: Tensor | LinearOperator, n_layers: int = 16, rho: float = 0.4,
                 mu: float | None = None, support: SupportSelection | None = None) -> None:
        H = as_operator(H).matrix()
        super().__init__(H, n_layers)
        mu = default_step(H) if mu is None else float(mu)
        n = H.shape[1]
        W1 = mu * H.mT
        W2 = torch.eye(n, dtype=H.dtype) - mu * H.mT @ H
        self.W1 = nn.Parameter(W1.expand(n_layers, -1, -1).clone())
        self.W2 = nn.Parameter(W2.expand(n_layers, -1, -1).clone())
        self.theta = nn.Parameter(torch.full((n_layers,), mu * rho, dtype=H.dtype))
        self.support = support

    def layer(self, k: int) -> IstaLayer:
        return IstaLayer(W1=_dense(self.W1[k]), W2=_dense(self.W2[k]), theta=self.theta[k],
                         shrink=_shrinkage(self.support, k))


class LISTACP(IstaFamily):
    """LISTA-CP (Chen et al. 2018): s_{k+1} = T_theta_k(s_k + W_k'(x - H s_k)), W_k (m, n) per layer.

    Eq. (22) with the coupling W2_k = I - W1_k H that makes convergence possible. Initialized
    at W_k = mu H, theta_k = mu rho (ISTA). `support` gives LISTA-CPSS.
    """

    def __init__(self, H: Tensor | LinearOperator, n_layers: int = 16, rho: float = 0.4,
                 mu: float | None = None, support: SupportSelection | None = None) -> None:
        H = as_operator(H).matrix()
        super().__init__(H, n_layers)
        mu = default_step(H) if mu is None else float(mu)
        self.W = nn.Parameter((mu * H).expand(n_layers, -1, -1).clone())
        self.theta = nn.Parameter(torch.full((n_layers,), mu * rho, dtype=H.dtype))
        self.support = support

    def layer(self, k: int) -> IstaLayer:
        W = self.W[k]
        return gradient_layer(self.H, lambda v: v @ W, self.theta[k], _shrinkage(self.support, k))


def coherence_minimizing_weight(H: Tensor) -> Tensor:
    """W (m, n) minimising ||W'H||_F^2 subject to diag(W'H) = 1 (ALISTA's analytic weight).

    The problem splits over columns: min_w w'G w s.t. h_i'w = 1 with G = H H', whose
    solution is w_i = G^-1 h_i / (h_i' G^-1 h_i). So W = G^-1 H D^-1 with D = diag(H'G^-1 H),
    in closed form (one m x m solve) instead of Liu et al.'s projected gradient descent
    on the same Frobenius objective. Needs H of full row rank (m <= n). Computed in
    float64, returned in H's dtype.
    """
    H64 = H.to(torch.float64)
    GinvH = torch.linalg.solve(H64 @ H64.mT, H64)  # G^-1 H
    return (GinvH / (H64 * GinvH).sum(0, keepdim=True)).to(H.dtype)  # / h_i' G^-1 h_i per column


class ALISTA(IstaFamily):
    """ALISTA (Liu et al. ICLR 2019): s_{k+1} = T_theta_k(s_k + gamma_k W'(x - H s_k)).

    W is fixed, computed once by `coherence_minimizing_weight` unless given; only gamma_k and
    theta_k are learned (2K parameters). Initialized at gamma_k = mu and theta_k = mu rho,
    with mu = 1 / (1.001 ||W'H||_2) (for W = H: ISTA's step, so ALISTA(W=H) starts as ISTA).
    Support selection on by default, as in the paper.
    """

    def __init__(self, H: Tensor | LinearOperator, n_layers: int = 16, rho: float = 0.4,
                 mu: float | None = None, W: Tensor | None = None,
                 support: SupportSelection | None = CPSS) -> None:
        H = as_operator(H).matrix()
        super().__init__(H, n_layers)
        self.register_buffer("W", coherence_minimizing_weight(H) if W is None else W.to(H.dtype))
        if mu is None:
            mu = 1.0 / (LIPSCHITZ_MARGIN * spectral_norm(MatrixOperator(self.W.mT @ H)))
        self.gamma = nn.Parameter(torch.full((n_layers,), float(mu), dtype=H.dtype))
        self.theta = nn.Parameter(torch.full((n_layers,), float(mu) * rho, dtype=H.dtype))
        self.support = support

    def layer(self, k: int) -> IstaLayer:
        gamma = self.gamma[k]
        return gradient_layer(self.H, lambda v: gamma * (v @ self.W), self.theta[k],
                              _shrinkage(self.support, k))


def warm_start_from_alista(model: LISTA | LISTACP, alista: ALISTA) -> None:
    """Set `model`'s layers to a (trained) ALISTA's, so that it computes the same iterates.

    ALISTA's layer k is the coupled step with W_k = gamma_k W; LISTA-CP takes W_k itself,
    LISTA its untied form W1_k = W_k', W2_k = I - W_k'H (eq. (22)); theta_k is copied. An
    initialization for the learned-matrix variants that starts them where the analytic
    weights end (the support selection schedules must match: the caller's choice).
    """
    if model.n_layers != alista.n_layers:
        raise ValueError(f"layer counts differ: {model.n_layers} vs ALISTA's {alista.n_layers}")
    with torch.no_grad():
        W = alista.gamma[:, None, None] * alista.W  # (K, m, n): W_k = gamma_k W
        model.theta.copy_(alista.theta)
        if isinstance(model, LISTACP):
            model.W.copy_(W)
        elif isinstance(model, LISTA):
            H = model.H.matrix()
            model.W1.copy_(W.mT)
            model.W2.copy_(torch.eye(H.shape[1], dtype=H.dtype) - W.mT @ H)
        else:
            raise TypeError(f"cannot warm-start {type(model).__name__} from ALISTA")


def _build(name: str, family: Family, solver: Callable[[Tensor], nn.Module], *, backend: str, seed: int,
           m: int, n: int) -> SparseCodingEngine:
    if backend not in ("auto", "torch"):
        raise BackendUnavailable(f"{name}: runs on torch only, not {backend!r}")
    H = sensing_matrix(int(m), int(n), int(seed))
    return SparseCodingEngine(name, family, solver(H), operator=H.numpy())


def build_ista(*, backend: str = "auto", seed: int = 0, m: int = 250, n: int = 500, n_iter: int = 16,
               rho: float = 0.4, mu: float | None = None) -> SparseCodingEngine:
    """engines.load("ista", ...): ISTA on the benchmark's H = sensing_matrix(m, n, seed)."""
    return _build("ista", "model-based", lambda H: ISTA(H, rho=float(rho), n_iter=int(n_iter), mu=mu),
                  backend=backend, seed=seed, m=m, n=n)


def build_fista(*, backend: str = "auto", seed: int = 0, m: int = 250, n: int = 500, n_iter: int = 16,
                rho: float = 0.4, mu: float | None = None) -> SparseCodingEngine:
    """engines.load("fista", ...): FISTA on the benchmark's H = sensing_matrix(m, n, seed)."""
    return _build("fista", "model-based", lambda H: FISTA(H, rho=float(rho), n_iter=int(n_iter), mu=mu),
                  backend=backend, seed=seed, m=m, n=n)
