"""The RPCA family (CORONA's): one step, and where its parameters come from.

Robust PCA for clutter suppression (Solomon et al., IEEE TMI 2019; seed Fig. 6): a window
of T complex I/Q frames, as the (H*W) x T Casorati matrix D, is D = H1 L + H2 S + N with L
low-rank (tissue) and S row-sparse (bubbles: few pixels, each a whole time series). FISTA on

    min_{L,S} 0.5 ||D - (H1 L + H2 S)||_F^2 + lambda1 ||L||_* + lambda2 ||S||_{1,2}

takes the step written once in `rpca_step` (the paper's eq. (8) with its P1..P6):

    L_{k+1} = SVT_{tau_L}(P1 D + P3 S_k + P5 L_k)              (singular value thresholding)
    S_{k+1} = T_{tau_S}(P2 D + P4 S_k + P6 L_k)                (row-wise mixed l1/l2 shrinkage)

The points of the spectrum (ARCHITECTURE.md "One family, one step") differ in `layer(k)`:

    RPCA-FISTA  P1 = P2 = mu H', P3 = -mu H1'H2, P4 = I - mu H2'H2, P5 = I - mu H1'H1,
                P6 = -mu H2'H1, tau_L = mu lambda1, tau_S = mu lambda2, tied; the step taken
                from FISTA's momentum point (Beck & Teboulle)                   (this module)
    CORONA      P1..P6 per-layer learned complex convolutions, learned thresholds (corona.py)

Here H1 = H2 = I: the simulator's truth (`tissue`, `bubbles`) is already seen through the
PSF, so the separation is of D itself; then mu = 1 / L_f with L_f = ||[H1 H2]||^2 = 2.

Windows are batch-first real tensors (N, T, 2, H, W) [I, Q], the Engine layout; every map
and prox acts on that layout, so one step serves the exact solver (torch.linalg.svd) and
the exportable network (engines.ops.svt_exportable) alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from engines.ops.shrinkage import mixed_l12_shrinkage, svt
from engines.ops.svt_exportable import as_threshold

LinearMap = Callable[[Tensor], Tensor]
Prox = Callable[[Tensor], Tensor]

LIPSCHITZ = 2.0  # ||[H1 H2]||_2^2 for H1 = H2 = I
# A grid search at 50 iterations on 32 training windows (32 x 32 x 20) of sim:ceus (seed 7): the
# lowest MSE of S on the ridge lambda2 ~ 0.1 lambda1 * sqrt(H W) away from where tissue leaks into S
LAMBDA1, LAMBDA2 = 0.125, 0.45


def casorati(x: Tensor) -> tuple[Tensor, Tensor]:
    """Windows (N, T, 2, H, W) -> real and imaginary Casorati matrices (N, H*W, T)."""
    N, T = x.shape[0], x.shape[1]
    Z = x.reshape(N, T, 2, -1).transpose(1, 3)  # (N, HW, 2, T)
    return Z[:, :, 0], Z[:, :, 1]


def from_casorati(Zr: Tensor, Zi: Tensor, like: Tensor) -> Tensor:
    """Inverse of `casorati`: (N, H*W, T) pairs -> windows shaped like `like` (N, T, 2, H, W)."""
    return torch.stack([Zr, Zi], dim=2).transpose(1, 3).reshape(like.shape)


def window_svt(x: Tensor, tau: Tensor | float) -> Tensor:
    """SVT of each window's complex Casorati matrix by torch.linalg.svd; tau a float or (N,)."""
    Zr, Zi = casorati(x)
    tau = as_threshold(tau, x).reshape(-1, 1)
    Z = svt(torch.complex(Zr, Zi), tau)
    return from_casorati(Z.real, Z.imag, x)


def window_mixed_shrinkage(x: Tensor, tau: Tensor | float) -> Tensor:
    """Row-wise mixed l1/l2 shrinkage: each pixel's time series (T complex values) as one group.

    The prox of tau ||S||_{1,2} on the Casorati matrix (rows = pixels); tau a float or (N,).
    """
    N, T, C, H, W = x.shape
    rows = x.permute(0, 3, 4, 1, 2).reshape(N, H * W, T * C)  # |row|_2 over (T, I/Q) = complex row norm
    tau = as_threshold(tau, x).reshape(-1, 1, 1)
    return mixed_l12_shrinkage(rows, tau).reshape(N, H, W, T, C).permute(0, 3, 4, 1, 2)


Mix = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True, slots=True)
class RpcaLayer:
    """The parameters of one RPCA step: `mix(D, S, L)` = (P1 D + P3 S + P5 L, P2 D + P4 S + P6 L),
    the six maps P1..P6 on windows (N, T, 2, H, W) applied together (CORONA runs them as one
    convolution), and the two proximal maps, thresholds included: an SVT for L, a mixed-norm
    shrinkage for S."""

    mix: Mix
    prox_L: Prox
    prox_S: Prox


def linear_mix(P1: LinearMap, P2: LinearMap, P3: LinearMap, P4: LinearMap, P5: LinearMap,
               P6: LinearMap) -> Mix:
    """The mix (D, S, L) -> (P1 D + P3 S + P5 L, P2 D + P4 S + P6 L) of six separate maps."""
    return lambda D, S, L: (P1(D) + P3(S) + P5(L), P2(D) + P4(S) + P6(L))


def rpca_step(L: Tensor, S: Tensor, D: Tensor, p: RpcaLayer) -> tuple[Tensor, Tensor]:
    """L_{k+1} = SVT(P1 D + P3 S + P5 L), S_{k+1} = T(P2 D + P4 S + P6 L): Solomon et al. eq. (8)."""
    Z_L, Z_S = p.mix(D, S, L)
    return p.prox_L(Z_L), p.prox_S(Z_S)


class RpcaFamily(nn.Module):
    """K steps of `rpca_step` from L_0 = S_0 = 0; subclasses say where layer k's parameters come from.

    forward(D (N, T, 2, H, W)) -> S_K, the bubbles (what the engine shows); with
    `pair_output` set, stack([L_K, S_K], dim=1) (N, 2, T, 2, H, W), the view training uses
    for its loss on both. `iterates(D)` gives [(L_1, S_1), ..., (L_K, S_K)] (the MSE per
    layer / iteration). With `momentum` (FISTA) each step starts from the momentum point
    of both L and S, z_k = x_k + (t_{k-1} - 1) / t_k (x_k - x_{k-1}).
    """

    pair_output = False

    def __init__(self, n_layers: int, momentum: bool = False) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"need at least one layer/iteration, got {n_layers}")
        self.n_layers, self.momentum = int(n_layers), momentum

    def layer(self, k: int) -> RpcaLayer:
        raise NotImplementedError

    def iterates(self, D: Tensor, n_layers: int | None = None) -> list[tuple[Tensor, Tensor]]:
        L = S = torch.zeros_like(D)
        zL, zS, t = L, S, 1.0
        out = []
        for k in range(self.n_layers if n_layers is None else n_layers):
            L_next, S_next = rpca_step(zL, zS, D, self.layer(k))
            if self.momentum:
                t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
                beta = (t - 1) / t_next
                zL, zS = L_next + beta * (L_next - L), S_next + beta * (S_next - S)
                t = t_next
            else:
                zL, zS = L_next, S_next
            L, S = L_next, S_next
            out.append((L, S))
        return out

    def forward(self, D: Tensor) -> Tensor:
        L, S = self.iterates(D)[-1]
        return torch.stack([L, S], dim=1) if self.pair_output else self.shown(D, L, S)

    def shown(self, D: Tensor, L: Tensor, S: Tensor) -> Tensor:
        """What forward returns without `pair_output`: S, or D - L where `output` is "residual"."""
        return D - L if getattr(self, "output", "S") == "residual" else S


def _scale(c: float) -> LinearMap:
    return lambda x: c * x


def rms(D: Tensor) -> Tensor:
    """The root mean square of each window (N,), never 0."""
    return D.square().mean(dim=tuple(range(1, D.ndim))).sqrt().clamp_min(torch.finfo(D.dtype).tiny)


class RobustPCA(RpcaFamily):
    """Model-based RPCA by FISTA (Solomon et al. 2019, eq. (8)) with H1 = H2 = I; see the module docstring.

    Each window is first scaled to RMS 1, so lambda1, lambda2 are relative to the data's
    level (0.5 ||D - L - S||^2 is not scale-invariant: scaling D by c is the same as
    scaling the lambdas by 1/c); the result is scaled back. The nuclear-norm weight is
    lambda1 sqrt(H W): the singular values of the noise grow like sqrt(H W), so one
    lambda1 serves 32 x 32 training patches and 128 x 128 live frames (the row norms that
    lambda2 competes with do not depend on H W). Defaults: tuned on the simulator
    (LAMBDA1, LAMBDA2). The SVT is exact (torch.linalg.svd).
    """

    def __init__(self, lambda1: float = LAMBDA1, lambda2: float = LAMBDA2, n_iter: int = 50,
                 momentum: bool = True) -> None:
        super().__init__(n_iter, momentum)
        if lambda1 < 0 or lambda2 < 0:
            raise ValueError(f"lambda1, lambda2 must be >= 0, got {lambda1}, {lambda2}")
        self.lambda1, self.lambda2 = float(lambda1), float(lambda2)
        self.mu = 1.0 / LIPSCHITZ

    def layer(self, k: int) -> RpcaLayer:
        mu = self.mu
        mix = linear_mix(P1=_scale(mu), P2=_scale(mu), P3=_scale(-mu), P4=_scale(1 - mu), P5=_scale(1 - mu),
                         P6=_scale(-mu))
        return RpcaLayer(mix, prox_L=self._svt,
                         prox_S=partial(window_mixed_shrinkage, tau=mu * self.lambda2))

    def _svt(self, Z: Tensor) -> Tensor:
        return window_svt(Z, self.mu * self.lambda1 * math.sqrt(Z.shape[-2] * Z.shape[-1]))

    def iterates(self, D: Tensor, n_layers: int | None = None) -> list[tuple[Tensor, Tensor]]:
        c = rms(D).reshape(-1, *([1] * (D.ndim - 1)))
        return [(L * c, S * c) for L, S in super().iterates(D / c, n_layers)]

    def objective(self, D: Tensor, L: Tensor, S: Tensor) -> Tensor:
        """0.5 ||D - L - S||_F^2 + lambda1 sqrt(H W) ||L||_* + lambda2 ||S||_{1,2} per window (N,),
        of the window scaled to RMS 1."""
        c = rms(D).reshape(-1, *([1] * (D.ndim - 1)))
        D, L, S = D / c, L / c, S / c
        Zr, Zi = casorati(L)
        nuclear = torch.linalg.svdvals(torch.complex(Zr, Zi)).sum(-1)
        N = D.shape[0]
        rows = S.permute(0, 3, 4, 1, 2).reshape(N, -1, S.shape[1] * S.shape[2])
        mixed = torch.linalg.vector_norm(rows, dim=-1).sum(-1)
        fit = 0.5 * (D - L - S).reshape(N, -1).square().sum(-1)
        lambda1 = self.lambda1 * math.sqrt(D.shape[-2] * D.shape[-1])
        return fit + lambda1 * nuclear + self.lambda2 * mixed
